"""`kimi-local config`: write a config file sized for this machine, show the effective values and their sources.

`config init` probes the machine (RAM, cores, GPU memory, free disk next to the model) and writes every setting
with its help text as a comment, filling in the sized ones: threads = physical cores, the biggest RAM expert
cache that leaves headroom, the GPU budget and its expert tier. It sizes for the given (or configured) model, or
for Kimi-K2 itself when none is given. `config show` prints the effective configuration as TOML with, beside each
value, where it came from (default, file, environment variable, flag) and what an "auto" value resolves to.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from kimi_local import sizing
from kimi_local.atomic_file import write_text_atomic
from kimi_local.commands import units
from kimi_local.config import SECTIONS, SPECS, Config, build_config, describe
from kimi_local.footprint import footprint
from kimi_local.model.config import ModelConfig
from kimi_local.settings import (ENV_PREFIX, SettingsError, add_config_flags, config_target, env_var,
                                 resolve_settings)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config", help="write, show or locate the kimi-local.toml configuration",
        description="One TOML file holds the engine's settings (model path, device, GPU budget, RAM expert "
        f"cache, pinned experts, prefetch, threads, context, server, TUI). {ENV_PREFIX}<SECTION>_<KEY> "
        "environment variables override the file and command-line flags override both. The global "
        "--config PATH (before the subcommand) picks another file.",
    )
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="write a commented config sized for this machine",
                          description="Probe this machine (RAM, cores, GPU, free disk next to the model) and write "
                          "a commented kimi-local.toml with sized values: threads = physical cores, the biggest RAM "
                          "expert cache that leaves headroom, the GPU budget. Sizes for --model, else the "
                          "configured model, else Kimi-K2.")
    init.add_argument("--model", metavar="DIR", help="size for this checkpoint (a directory with config.json)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument("--stdout", action="store_true", help="print the file instead of writing it")
    init.set_defaults(func=run_init)
    show = sub.add_parser("show", help="print the effective config and where each value came from",
                          description="Print the effective configuration (defaults < file < environment < flags) "
                          "as TOML, each value annotated with its source and, for auto values, what they resolve to.")
    show.add_argument("--model", metavar="DIR", help="override the configured model")
    show.add_argument("--json", action="store_true", help="print JSON: {key: {value, source}}")
    add_config_flags(show, tuple(SECTIONS))
    show.set_defaults(func=run_show)
    path = sub.add_parser("path", help="print the config file path in use", description="Print the path of the "
                          "config file this run would read, and whether it exists.")
    path.set_defaults(func=run_path)


# -- TOML rendering --------------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_toml(config: Config, comments: dict[str, list[str]], trailing: dict[str, str] | None = None,
                header: list[str] = ()) -> str:
    """The config as TOML: `comments[key]` lines above a value, `trailing[key]` after it on the same line."""
    trailing = trailing or {}
    out = [f"# {line}".rstrip() for line in header]
    current = None
    for key, spec in SPECS.items():
        if spec.section != current:
            current = spec.section
            out += ["", f"[{current}]"]
        if comments.get(key):
            out += ([""] if out and out[-1] != f"[{current}]" else []) + [f"# {c}" for c in comments[key]]
        line = f"{spec.name} = {toml_value(config.get(key))}"
        out.append(f"{line}  # {trailing[key]}" if key in trailing else line)
    return "\n".join(out).lstrip("\n") + "\n"


# -- init ------------------------------------------------------------------------------------------------
def _model_for_init(args: argparse.Namespace) -> tuple[Path | None, ModelConfig, str]:
    chosen = args.model
    if not chosen:
        try:
            chosen = resolve_settings(args).config.model
        except SettingsError:
            chosen = ""  # a broken existing file is what --force replaces
    if chosen:
        path = Path(chosen).expanduser().resolve()
        return path, ModelConfig.from_file(path / "config.json"), str(path)
    from kimi_local.model.presets import KIMI_K2_CONFIG

    return None, ModelConfig.from_dict(KIMI_K2_CONFIG, source="Kimi-K2 preset"), "Kimi-K2 (no --model given)"


def init_text(machine: sizing.Machine, model_path: Path | None, model: ModelConfig, model_label: str) -> str:
    """The commented config file `config init` writes for `machine` and `model`."""
    fp = footprint(model)
    rec = sizing.recommend(machine, fp)
    values = {"engine.threads": rec.threads, "engine.dtype": rec.dtype, "engine.gpu_memory_gb": rec.gpu_memory_gb,
              "cache.ram_gb": rec.ram_gb, "cache.gpu_gb": rec.gpu_cache_gb}
    if model_path is not None:
        values["model"] = str(model_path)
    config = build_config(values)
    comments = {key: [spec.rule.help[0].upper() + spec.rule.help[1:] + ".", f"({describe(spec.rule, spec.kind)})"]
                for key, spec in SPECS.items()}
    gpus = ", ".join(f"{g.name} ({units.size(g.total_bytes)}, {units.size(g.free_bytes)} free)" for g in machine.gpus)
    usable = sizing.ram_limit_bytes(machine)
    comments["engine.device"].append(f"Found: {gpus or 'no GPU'}; auto means {rec.device} here.")
    comments["engine.threads"].append(f"Sized: {machine.physical_cores} physical cores ({machine.logical_cores} "
                                      "logical).")
    comments["cache.ram_gb"].append(
        f"Sized: {units.size(machine.ram_total)} RAM - {units.size(sizing.ram_headroom_bytes(machine))} headroom "
        f"(at most {units.size(machine.ram_available)} available now) = {units.size(usable)} usable, minus "
        f"{units.size(sizing.cpu_resident_bytes(config, fp, machine))} of CPU-resident layers and KV cache, capped "
        f"at all routed experts ({units.size(fp.routed_bytes)})"
        + ("; they all fit, so 0 (auto) takes exactly them." if sizing.auto_ram_cache_bytes(config, fp, machine) >= fp.routed_bytes
           else "."))
    if machine.gpus:
        comments["engine.gpu_memory_gb"].append(f"Sized: {sizing.GPU_BUDGET_FRACTION:.0%} of the GPU's free memory.")
        comments["cache.gpu_gb"].append("Sized: the GPU budget left after resident layers and KV cache.")
    header = [f"kimi-local configuration, written by `kimi-local config init` on {time.strftime('%Y-%m-%d %H:%M')}.",
              f"Sized for {model_label}: {units.count(fp.total_params)} parameters, routed experts "
              f"{units.size(fp.routed_bytes)}, resident {units.size(fp.resident_bytes)} on disk.",
              f"Machine: {units.size(machine.ram_total)} RAM, {machine.physical_cores} cores, {gpus or 'no GPU'}"
              + (f"; {units.size(machine.disk_free)} free disk at {machine.disk_path}." if machine.disk_free is not None
                 else "."),
              *(f"Note: {note}." for note in rec.notes),
              f"Precedence: this file < {ENV_PREFIX}<SECTION>_<KEY> environment variables < command-line flags.",
              "`kimi-local config show` prints the effective values and where each came from."]
    if model_path is None:
        comments["model"].append("Not set: give --model to `config init` to size for your checkpoint.")
    return render_toml(config, comments, header=header)


def run_init(args: argparse.Namespace) -> int:
    path, _ = config_target(args)
    model_path, model, label = _model_for_init(args)
    machine = sizing.probe_machine(model_path)
    text = init_text(machine, model_path, model, label)
    if args.stdout:
        print(text, end="")
        return 0
    if path.exists() and not args.force:
        raise FileExistsError(f"{path} already exists (use --force to overwrite, or --stdout to print)")
    write_text_atomic(path, text)
    print(f"wrote {path}")
    return 0


# -- show / path -----------------------------------------------------------------------------------------
def auto_notes(config: Config, machine: sizing.Machine) -> dict[str, str]:
    """What the "decide at load time" values resolve to on this machine."""
    notes = {"engine.device": f"auto: {sizing.device_kind(config, machine)}",
             "engine.dtype": f"auto: {sizing.dtype_name(config, machine)}",
             "engine.threads": f"auto: {sizing.resolve_threads(config, machine)} physical cores"}
    if machine.gpus and sizing.device_kind(config, machine) == "cuda":
        notes["engine.gpu_memory_gb"] = f"auto: {units.size(sizing.resolve_gpu_memory_bytes(config, machine))}"
    model_json = Path(config.model).expanduser() / "config.json" if config.model else None
    if model_json is not None and model_json.is_file():
        try:
            fp = footprint(ModelConfig.from_file(model_json))
            notes["cache.ram_gb"] = f"auto: {units.size(sizing.resolve_ram_cache_bytes(config, fp, machine))}"
        except ValueError:
            pass  # a broken model config is `info`/`verify`'s to report
    return notes


def run_show(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    config = settings.config
    if args.json:
        print(json.dumps({
            "file": {"path": str(settings.file.path), "exists": settings.file.exists, "chosen_by": settings.file.chosen_by},
            "values": {key: {"value": config.get(key), "source": settings.source(key), "env": env_var(key)}
                       for key in SPECS},
        }, indent=2))
        return 0
    machine = sizing.probe_machine(config.model or None)
    auto = auto_notes(config, machine)
    trailing = {}
    for key in SPECS:
        value, source = config.get(key), settings.source(key)
        is_auto = value in (0, "auto") and not isinstance(value, bool) and key in auto
        trailing[key] = source + (f"; {auto[key]}" if is_auto else "")
    state = "found" if settings.file.exists else "not found, defaults used"
    header = [f"config file: {settings.file.path} ({settings.file.chosen_by}; {state})"]
    print(render_toml(config, {}, trailing, header), end="")
    return 0


def run_path(args: argparse.Namespace) -> int:
    path, chosen_by = config_target(args)
    print(f"{path}  ({chosen_by}; {'exists' if path.exists() else 'does not exist'})")
    return 0
