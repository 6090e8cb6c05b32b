"""`kimi-local verify`: check every shard and tensor of a checkpoint against its index and config.

All problems are listed, not just the first (model/verify.py); the exit status is 1 when any is an error.
"""

from __future__ import annotations

import argparse
import json
import time

from kimi_local.commands import units
from kimi_local.commands.common import add_model_argument, load_config, progress_bar, resolve_model_dir
from kimi_local.model.verify import bytes_to_read, verify_checkpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a checkpoint's shards and tensors against its index and config, reporting every problem",
        description="Check config.json, the index and every shard: headers, tensor names, dtypes, shapes, "
        "fp8 scale grids ([ceil(N/128), ceil(K/128)]), byte ranges, and that every byte reads back (with a "
        "progress bar); float32/bf16 tensors are checked for NaN/inf on the way. Every problem found is "
        "reported with its file and tensor. Exit status 1 if any error was found.",
    )
    add_model_argument(p)
    p.add_argument("--headers-only", action="store_true", help="check config, index and headers; do not read the data")
    p.add_argument("--values", action="store_true", help="also scan fp8 weights for NaN codes (0x7f/0xff)")
    p.add_argument("--json", action="store_true", help="print one JSON object with every problem")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = resolve_model_dir(args.model, load_config(args))
    t0 = time.perf_counter()
    total = 0 if args.headers_only else bytes_to_read(path)
    with progress_bar(total, "verifying") as bar:
        report = verify_checkpoint(path, progress=bar.update, read_data=not args.headers_only,
                                   check_values=args.values)
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({
            "path": str(path), "ok": report.ok, "tensors": report.num_tensors, "shards": report.num_shards,
            "bytes_read": report.bytes_read, "seconds": round(seconds, 3),
            "problems": [{"severity": p.severity, "file": p.file, "tensor": p.tensor, "message": p.message}
                         for p in report.problems],
        }, indent=2))
    else:
        for problem in report.problems:
            print(problem)
        rate = f", {units.rate(report.bytes_read / seconds)}" if report.bytes_read and seconds > 0 else ""
        verdict = "OK" if report.ok else "FAILED"
        print(f"{verdict}: {path}: {report.num_tensors} tensors in {report.num_shards} shards, "
              f"{units.size(report.bytes_read)} read in {seconds:.1f} s{rate}; "
              f"{len(report.errors)} errors, {len(report.warnings)} warnings")
    return 0 if report.ok else 1
