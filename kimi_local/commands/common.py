"""Pieces every command shares: the model directory (or the built-in demo checkpoint), the configuration,
progress bars."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import platformdirs
from tqdm import tqdm

from kimi_local import __version__
from kimi_local.config import Config

log = logging.getLogger(__name__)

DEMO_NAME = "demo-checkpoint-v1"


def demo_checkpoint_dir() -> Path:
    return Path(platformdirs.user_cache_dir("kimi-local")) / DEMO_NAME


def progress_bar(total: int, desc: str, unit: str = "B") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
                file=sys.stderr, disable=None, leave=False)


def load_with_progress(model_dir: Path, config: Config):
    """`engine.loader.load` with a layer progress bar on stderr; returns the LoadedModel."""
    from kimi_local.engine.loader import load

    with progress_bar(0, "loading model", unit="layers") as bar:
        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        return load(model_dir, config, progress=on_progress)


def ensure_demo_checkpoint() -> Path:
    """The built-in demo model (random weights), written on first use into the user cache directory."""
    path = demo_checkpoint_dir()
    if (path / "config.json").exists():
        return path
    from kimi_local.model.presets import PRESET_SHARDS, PRESETS
    from kimi_local.model.writer import checkpoint_bytes, write_checkpoint

    config = PRESETS["demo"]
    log.warning("creating the built-in demo checkpoint (random weights) in %s", path)
    with progress_bar(checkpoint_bytes(config), "creating demo checkpoint") as bar:
        write_checkpoint(config, path, seed=0, num_shards=PRESET_SHARDS["demo"], progress=bar.update)
    return path


def resolve_model_dir(model: str | None, config: Config | None = None) -> Path:
    """An explicit --model, else the configured model, else the demo checkpoint."""
    chosen = model or (config.model if config else "")
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model directory '{path}' does not exist")
        return path
    return ensure_demo_checkpoint()


def is_demo(path: Path) -> bool:
    return path.resolve() == demo_checkpoint_dir().resolve()


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="checkpoint directory (default: configured model, else the built-in demo)")


def load_config(args: argparse.Namespace) -> Config:
    """The effective configuration for this command (file, environment, flags)."""
    from kimi_local.settings import load_settings

    return load_settings(args)


def version_string() -> str:
    return f"kimi-local {__version__}"
