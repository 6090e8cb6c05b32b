"""The reliability figures: API fuzzing, hostile requests, a bounded soak, memory under a RAM budget, faults.

    python benchmarks/reliability.py [--soak-seconds 600] [--clients 16] [--fuzz-examples 100] [--kills 20]
                                     [--model DIR] [--only fuzz hostile soak memory faults]

Runs on the tiny synthetic checkpoint (written to a temporary directory) unless --model is given; everything
stays on 127.0.0.1. The suites are the ones in tests/reliability (see their docstrings); here they run longer:

- fuzz: schemathesis over the server's completed OpenAPI document, --fuzz-examples per operation and
  generation mode: cases run, failures (any 5xx or schema violation), lenient acceptances;
- hostile: the hand-written hostile requests: cases survived;
- soak: `kimi-local serve` started as its own process (with a RAM expert-cache budget of a few slots) and
  --clients concurrent clients mixing streaming, non-streaming, cancelled and oversized requests for
  --soak-seconds: requests served, errors by kind, p50/p99 latency, server RSS at start and end against the
  stated bound (growth < SOAK_RSS_GROWTH_BOUND);
- memory: a store of 3 slots streams 8x (budget + overhead) from disk; the RSS peak against budget + overhead;
- faults: expert-store faults under load (transient EIO, unreadable expert, shard truncated / deleted mid-decode)
  and writers killed mid-save (--kills for the routing profile, a quarter as many for a conversation).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the suites live in tests/reliability

from kimi_local.cache.reader import expert_slot_bytes  # noqa: E402
from kimi_local.model.checkpoint import Checkpoint  # noqa: E402
from kimi_local.model.presets import PRESET_SHARDS, PRESETS  # noqa: E402
from kimi_local.model.writer import write_checkpoint  # noqa: E402
from kimi_local.server.app import create_app  # noqa: E402
from kimi_local.sizing import GiB  # noqa: E402
from tests.reliability.atomic import kill_while_writing  # noqa: E402
from tests.reliability.faults import SCENARIOS  # noqa: E402
from tests.reliability.fuzz import run_fuzz  # noqa: E402
from tests.reliability.hostile import run_hostile  # noqa: E402
from tests.reliability.memory import OVERHEAD, stream_from_disk  # noqa: E402
from tests.reliability.openapi_doc import complete_openapi  # noqa: E402
from tests.reliability.servers import Sizes, load_cached, load_plain, serve  # noqa: E402
from tests.reliability.soak import run_soak  # noqa: E402

MiB = 1 << 20
SOAK_RSS_GROWTH_BOUND = 64 * MiB
SOAK_SLOTS = 8
SOAK_SIZES = Sizes(max_context=256, max_batch=4, max_queue=32)


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 100 - len(title)), flush=True)


def fuzz(model_dir: Path, examples: int) -> dict:
    with serve(load_plain(model_dir, Sizes(max_context=256))) as running:
        start = time.perf_counter()
        report = run_fuzz(complete_openapi(create_app(running.state)), running.url, examples, seed=None)
        seconds = time.perf_counter() - start
    print(f"{report.cases} cases in {seconds:.0f} s ({examples} per operation and mode), "
          f"{report.num_engine_replies} answered by the engine; failures: {len(report.failures)}; "
          f"schema-violating requests accepted (lenient, not failures): {report.lenient}")
    statuses: dict[str, dict[int, int]] = {}
    for (operation, status), n in sorted(report.statuses.items()):
        statuses.setdefault(operation, {})[status] = n
    for operation, counts in statuses.items():
        print(f"  {operation:32s} " + ", ".join(f"{s}: {n}" for s, n in counts.items()))
    for example in report.lenient_examples:
        print(f"  lenient: {example}")
    for failure in report.failures[:5]:
        print(f"\n{failure}")
    return {"fuzz cases": report.cases, "fuzz failures": len(report.failures)}


def hostile(model_dir: Path) -> dict:
    with serve(load_plain(model_dir, Sizes())) as running:
        outcomes = run_hostile(running.url)
    survived = sum(o.survived for o in outcomes)
    slowest = max(outcomes, key=lambda o: o.seconds)
    print(f"{survived} of {len(outcomes)} hostile requests answered as expected "
          f"(slowest: {slowest.case.name}, {slowest.seconds:.2f} s)")
    for o in outcomes:
        if not o.survived:
            print(f"  FAILED {o.case.name}: {'; '.join(o.problems)}")
    return {"hostile survived": f"{survived}/{len(outcomes)}"}


def start_server_process(model_dir: Path, ram_bytes: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_LOCAL_")}
    env.update(XDG_CONFIG_HOME=str(workdir / "config"), XDG_CACHE_HOME=str(workdir / "cache"))
    args = [sys.executable, "-m", "kimi_local", "serve", "--model", str(model_dir), "--port", "0",
            "--expert-backend", "torch", "--max-context", str(SOAK_SIZES.max_context), "--max-batch",
            str(SOAK_SIZES.max_batch), "--max-queue", str(SOAK_SIZES.max_queue), "--ram-cache-gb",
            f"{ram_bytes / GiB:.9f}", "--no-profile", "--threads", "1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError("kimi-local serve exited before serving")
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError("kimi-local serve did not report its address")


def soak(model_dir: Path, seconds: float, clients: int, workdir: Path) -> dict:
    with Checkpoint.open(model_dir) as ckpt:
        ram_bytes = SOAK_SLOTS * expert_slot_bytes(ckpt) + expert_slot_bytes(ckpt) // 2
    proc, url = start_server_process(model_dir, ram_bytes, workdir)
    try:
        report = run_soak(url, seconds, clients=clients, seed=0, server_pid=proc.pid,
                          max_context=SOAK_SIZES.max_context)
    finally:
        proc.terminate()
        proc.wait(30)
    growth = report.rss_end - report.rss_start
    print(f"kimi-local serve (own process), RAM expert cache {SOAK_SLOTS} slots ({ram_bytes / MiB:.2f} MiB), "
          f"{SOAK_SIZES.max_batch} KV slots, queue {SOAK_SIZES.max_queue}")
    print(report.summary())
    ok = growth < SOAK_RSS_GROWTH_BOUND
    print(f"RSS growth {growth / MiB:+.1f} MiB against the bound of {SOAK_RSS_GROWTH_BOUND / MiB:.0f} MiB: "
          f"{'within' if ok else 'EXCEEDED'}")
    return {"soak served": report.served, "soak errors": report.num_errors,
            "soak p50/p99 ms": f"{report.percentile(50) * 1000:.0f}/{report.percentile(99) * 1000:.0f}",
            "soak RSS MiB": f"{report.rss_start / MiB:.0f} -> {report.rss_end / MiB:.0f}"}


def memory(model_dir: Path) -> dict:
    with serve(load_cached(model_dir, Sizes(max_context=128), 3)) as running:
        budget = running.store.snapshot()["ram_arena_bytes"]
        bound = budget + OVERHEAD
        read, growth, peak = stream_from_disk(running, 8 * bound)
    print(f"RAM budget {budget / 1024:.0f} KiB + stated overhead {OVERHEAD / MiB:.0f} MiB; read {read / MiB:.0f} MiB "
          f"from disk; RSS growth {growth / MiB:+.1f} MiB, peak {peak / MiB:+.1f} MiB: "
          f"{'within' if peak < bound else 'EXCEEDED'}")
    return {"memory peak growth MiB": f"{peak / MiB:.1f} (bound {bound / MiB:.1f}, read {read / MiB:.0f})"}


def faults(model_dir: Path, kills: int, workdir: Path) -> dict:
    survived = total = 0
    for name, scenario in SCENARIOS.items():
        result = scenario(model_dir, workdir)
        total += 1
        survived += result.survived
        details = f" ({'; '.join(result.details)})" if result.details else ""
        print(f"  {'survived' if result.survived else 'FAILED  '} {result.name}{details}")
        for problem in result.problems:
            print(f"           {problem}")
    for kind, n in (("profile", kills), ("conversation", max(1, kills // 4))):
        with tempfile.TemporaryDirectory(dir=workdir) as d:
            report = kill_while_writing(kind, Path(d), n, seed=n)
        total += report.kills
        survived += report.intact
        print(f"  {report.intact}/{report.kills} kills of a {kind} writer left a whole file "
              f"({report.mid_write} caught mid-write)" + "".join(f"\n           {p}" for p in report.problems))
    print(f"fault cases survived: {survived}/{total}")
    return {"fault cases survived": f"{survived}/{total}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: a fresh tiny checkpoint)")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--fuzz-examples", type=int, default=100)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--only", nargs="+", choices=["fuzz", "hostile", "soak", "memory", "faults"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.CRITICAL)  # the faults log their tracebacks; the figures are the output
    only = set(args.only or ["fuzz", "hostile", "soak", "memory", "faults"])
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="kimi-reliability-") as tmp:
        workdir = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            model_dir = write_checkpoint(PRESETS["tiny"], workdir / "tiny", seed=0, num_shards=PRESET_SHARDS["tiny"])
        print(f"model: {model_dir}; {os.cpu_count()} CPUs; torch {torch.__version__}")
        if "fuzz" in only:
            section("API fuzzing (schemathesis, OpenAI and Anthropic routes)")
            figures |= fuzz(model_dir, args.fuzz_examples)
        if "hostile" in only:
            section("hostile requests")
            figures |= hostile(model_dir)
        if "soak" in only:
            section(f"soak: {args.clients} clients for {args.soak_seconds:.0f} s")
            figures |= soak(model_dir, args.soak_seconds, args.clients, workdir)
        if "memory" in only:
            section("memory under a RAM expert-cache budget")
            figures |= memory(model_dir)
        if "faults" in only:
            section("faults")
            figures |= faults(model_dir, args.kills, workdir)
    section("summary")
    for key, value in figures.items():
        print(f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
