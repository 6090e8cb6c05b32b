"""`kimi-local bench ...`: benchmarks that measure side by side in one run and print the ratios.

Each benchmark is a subcommand registered by its own function below; the work lives in the package it measures.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (kernels, expert cache, decode)",
                              description="Benchmarks that measure side by side in one run.")
    benches = p.add_subparsers(dest="bench", metavar="BENCH")
    register_kernels(benches)
    register_cache(benches)
    register_store(benches)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# -- bench kernels --------------------------------------------------------------------------------------------


def register_kernels(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "kernels",
        help="CPU expert kernels against this machine's memory bandwidth and against torch",
        description="On Kimi-K2 expert shapes (gate/up [2048, 7168], down [7168, 2048]) measure, in one run: the "
        "memory read bandwidth, the decode kernel's fp8 weight bytes per second for one token through 8 experts "
        "(and torch on the same experts dequantized to bf16), and the prefill kernel's GFLOP/s at 16, 64 and 256 "
        "tokens (and torch fp32 matmuls on the dequantized expert). About two minutes; --quick: about one.",
    )
    p.add_argument("--threads", type=int, default=2, metavar="N",
                   help="threads for ours and for torch (default 2, the count the kernel targets are set for)")
    p.add_argument("--quick", action="store_true", help="smaller rotation and bandwidth buffers, fewer rounds")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: read_bandwidth_gbps, decode_gbps, decode_vs_bandwidth, "
                   "decode_vs_torch_bf16, prefill_gflops and prefill_vs_torch_fp32 (keyed by batch size), ...")
    p.set_defaults(func=run_kernels)


def run_kernels(args: argparse.Namespace) -> int:
    from kimi_local.kernels.bench import FULL, QUICK, format_report, run_benchmark

    result = run_benchmark(QUICK if args.quick else FULL, threads=args.threads)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


# -- bench cache ----------------------------------------------------------------------------------------------


def register_cache(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "cache",
        help="replay a routing trace through LRU, LFU, kimi-local's policy and Belady's OPT",
        description="Replay a routing trace (from `generate --trace-out`, or a synthetic Kimi-K2-shaped one) "
        "through LRU, LFU, the project's eviction policy and Belady's offline optimum at a cache of a fraction of "
        "all routed experts; report hit rate, share of the LRU-to-OPT gap closed, GB read per token for Kimi-K2's "
        "44 MB experts and the policy's CPU cost per lookup.",
    )
    p.add_argument("--trace", metavar="FILE.npz", help="routing trace (default: a synthetic realistic trace)")
    p.add_argument("--cache-fraction", type=float, default=0.2, metavar="F",
                   help="cache size as a fraction of all routed experts (default 0.2)")
    p.add_argument("--prefill-chunk", type=int, default=512, metavar="N",
                   help="prompt tokens per prefill step; each touches a layer's union of experts once (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic trace (default 0)")
    p.add_argument("--oracle", action="store_true",
                   help="synthetic trace only: also replay the policy that knows the generator's probabilities "
                   "(the online bound; slow), shown in the text output")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {policy: {hit_rate, gap_closed, gb_per_token, ...}}")
    p.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    from kimi_local.cache.bench_cache import POLICY_KEYS, format_cache_bench, run_cache_bench
    from kimi_local.cache.traces import TraceSpec, load_trace, synthesize_trace_with_probs

    oracle = None
    if args.trace:
        if args.oracle:
            raise ValueError("--oracle needs the synthetic trace (its hidden probabilities); drop --trace")
        trace = load_trace(args.trace)
    else:
        spec = TraceSpec(seed=args.seed)
        trace, probs = synthesize_trace_with_probs(spec)
        oracle = (probs, spec) if args.oracle else None
    result = run_cache_bench(trace, args.cache_fraction, prefill_chunk=args.prefill_chunk, oracle=oracle)
    if args.json:
        print(json.dumps({name: result[name] for name in POLICY_KEYS}))
    else:
        print(format_cache_bench(result))
    return 0


# -- bench stream, bench decode -------------------------------------------------------------------------------


def register_store(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "stream",
        help="expert reads through the store vs the disk's O_DIRECT sequential read rate",
        description="Read random routed experts through the expert store in decode-sized layer steps (all "
        "misses) and compare the rate with the disk's O_DIRECT sequential read rate measured in the same run.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (e.g. a k2-slice)")
    p.add_argument("--steps", type=int, default=8, help="layer steps of k experts to read (default 8)")
    p.add_argument("--io-threads", type=int, default=4, help="reads in flight (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_stream)

    p = benches.add_parser(
        "decode",
        help="decode tokens/s from a RAM expert cache smaller than the experts, against the bandwidth floor",
        description="Decode on a checkpoint whose routed experts do not fit --ram-cache-gb; report tokens/s, hit "
        "rate, disk bytes per token, RSS and the floor (the same bytes at the RAM and disk read rates measured "
        "in the same run), and where stalls come from: reads nobody predicted, reads predicted too late, and "
        "the needed reads' disk time against the compute time they could hide behind.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (e.g. a k2-slice)")
    p.add_argument("--ram-cache-gb", type=float, required=True, metavar="G", help="RAM expert-cache budget, GiB")
    p.add_argument("--tokens", type=int, default=16, help="decoded tokens to time (default 16)")
    p.add_argument("--threads", type=int, default=0, help="CPU expert threads (default: physical cores)")
    p.add_argument("--io-threads", type=int, default=2,
                   help="I/O threads (default 2: two reach the disk's rate; more split it between more reads)")
    p.add_argument("--kernel", choices=("numba", "torch"), default="numba", help="expert kernel (default numba)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_decode)


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")


def run_stream(args: argparse.Namespace) -> int:
    from kimi_local.cache.bench_decode import bench_stream

    _print(bench_stream(args.model, num_steps=args.steps, num_io_threads=args.io_threads), args.json)
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from kimi_local.cache.bench_decode import bench_decode

    _print(bench_decode(args.model, args.ram_cache_gb, num_tokens=args.tokens, num_threads=args.threads or None,
                        num_io_threads=args.io_threads, kernel=args.kernel), args.json)
    return 0
