"""The `kimi-local` command line.

Each subcommand lives in its own module, which exposes `register(subparsers)`: it adds its parser and sets
`func=run` (a callable taking the parsed args and returning an exit code). This file only assembles them,
sets up logging and turns errors into one clear line (tracebacks with -v).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kimi_local import __version__

# Modules that define subcommands, in help order.
COMMANDS = (
    "kimi_local.commands.generate",
    "kimi_local.commands.make_checkpoint",
    "kimi_local.commands.info",
    "kimi_local.commands.verify",
    "kimi_local.commands.config_cmd",
    "kimi_local.commands.prompt",
    "kimi_local.commands.serve",
    "kimi_local.commands.chat",
    "kimi_local.commands.bench",
)

log = logging.getLogger("kimi_local")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kimi-local",
        description="Run Kimi-K2 (and any DeepSeek-V3-architecture block-fp8 checkpoint) on one workstation.",
    )
    parser.add_argument("--version", action="version", version=f"kimi-local {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug); show tracebacks")
    parser.add_argument("--config", dest="config_path", metavar="PATH",
                        help="config file (default: $KIMI_LOCAL_CONFIG, else kimi-local.toml in the user config dir; "
                        "see `kimi-local config path`)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line; the traceback only with -v
        if args.verbose:
            log.exception("kimi-local %s failed", args.command)
        print(f"kimi-local {args.command}: error: {exc}", file=sys.stderr)
        return 1
