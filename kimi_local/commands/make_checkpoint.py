"""`kimi-local make-checkpoint`: write a random-weight checkpoint in the exact Kimi-K2 layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kimi_local.commands.common import progress_bar


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "make-checkpoint",
        help="write a synthetic (random-weight) checkpoint in the Kimi-K2 file layout",
        description="Write a random-weight block-fp8 checkpoint for any DeepSeek-V3-architecture config, with the "
        "real tensor names, dtypes, scale grids, shard naming and index. Writing streams tensor by tensor, "
        "into a temporary directory renamed into place when complete.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="CONFIG_JSON", help="a config.json (e.g. Kimi-K2's) to write weights for")
    source.add_argument("--preset", choices=["tiny", "demo", "k2-slice"],
                        help="tiny: tests; demo: the built-in demo model; k2-slice: real Kimi-K2 layer shapes, few layers/experts")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--shards", type=int, default=None, help="number of shards (default: ~2 GiB each; presets: their own)")
    p.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    p.add_argument("--experts", type=int, default=None, help="override n_routed_experts")
    p.add_argument("--no-tokenizer", action="store_true", help="do not write the demo tokenizer files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kimi_local.model.presets import PRESET_SHARDS, PRESETS
    from kimi_local.model.writer import checkpoint_bytes, write_checkpoint

    if args.preset:
        config = dict(PRESETS[args.preset])
        shards = args.shards or PRESET_SHARDS.get(args.preset)
    else:
        path = Path(args.config)
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such config file") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        shards = args.shards
    if args.layers is not None:
        config["num_hidden_layers"] = args.layers
    if args.experts is not None:
        config["n_routed_experts"] = args.experts
    total = checkpoint_bytes(config)
    with progress_bar(total, "writing checkpoint") as bar:
        out = write_checkpoint(config, args.out, seed=args.seed, num_shards=shards, progress=bar.update,
                               with_tokenizer=not args.no_tokenizer)
    print(f"wrote {out} ({total / 1e9:.2f} GB)")
    return 0
