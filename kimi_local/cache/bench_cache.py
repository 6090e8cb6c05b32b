"""`kimi-local bench cache`: replay one routing trace through LRU, LFU, the project's policy and Belady's OPT.

All four run in one process on the same access stream (see `simulate.py` for the access order), so the
numbers are directly comparable:
- hit_rate: hits / expert lookups;
- gap_closed: (hit_rate - LRU) / (OPT - LRU), the share of what an oracle could add over LRU;
- gb_per_token: bytes read from disk per token (prefill and decode tokens alike) for experts of
  `expert_bytes` (Kimi-K2's: 44 MB), i.e. misses x expert size / tokens;
- lookup_ns: wall time of the replay per lookup, the policy's CPU cost (for OPT: the offline simulation's).

On a synthetic trace it can also replay `oracle_a0`, which knows the generator's hidden probabilities: how much
of the gap an online policy can reach at all on that trace.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kimi_local.cache.kimi_policy import KimiPolicy
from kimi_local.cache.oracle import SequenceOracle
from kimi_local.cache.policy import LFUPolicy, LRUPolicy
from kimi_local.cache.simulate import KIMI_EXPERT_BYTES, SimResult, access_stream, simulate, simulate_opt
from kimi_local.cache.traces import RoutingTrace, TraceSpec, trace_stats

POLICY_KEYS = ("lru", "lfu", "kimi_local", "opt")


def run_cache_bench(
    trace: RoutingTrace,
    cache_fraction: float,
    prefill_chunk: int = 512,
    expert_bytes: int = KIMI_EXPERT_BYTES,
    oracle: tuple[np.ndarray, TraceSpec] | None = None,
) -> dict[str, Any]:
    """`oracle`: (the generator's sequence weights, its spec) for a synthetic trace: adds `oracle_a0`, the
    online bound (`oracle.py`), to the result."""
    if not 0.0 < cache_fraction <= 1.0:
        raise ValueError(f"--cache-fraction {cache_fraction} must lie in (0, 1]")
    stream = access_stream(trace, prefill_chunk=prefill_chunk)
    capacity = max(1, int(cache_fraction * stream.num_keys))
    num_layers, num_experts = stream.num_layers, stream.num_experts
    results: dict[str, SimResult] = {
        "lru": simulate(stream, LRUPolicy(num_layers, num_experts), capacity),
        "lfu": simulate(stream, LFUPolicy(num_layers, num_experts), capacity),
        "kimi_local": simulate(
            stream, KimiPolicy(num_layers, num_experts, top_k=trace.top_k, capacity=capacity), capacity
        ),
        "opt": simulate_opt(stream, capacity),
    }
    if oracle is not None:
        results["oracle_a0"] = simulate(stream, SequenceOracle(stream, *oracle), capacity)
        results["oracle_a0_next"] = simulate(stream, SequenceOracle(stream, *oracle, protect_next=True), capacity)
    lru, opt = results["lru"].hit_rate, results["opt"].hit_rate
    out: dict[str, Any] = {}
    for name, r in results.items():
        decode_misses = r.decode_accesses - r.decode_hits
        out[name] = {
            "hit_rate": r.hit_rate,
            "gap_closed": (r.hit_rate - lru) / (opt - lru) if opt > lru else 0.0,
            "gb_per_token": r.misses * expert_bytes / max(stream.num_tokens, 1) / 1e9,
            "decode_hit_rate": r.decode_hit_rate,
            "decode_gb_per_token": decode_misses * expert_bytes / max(stream.num_decode_tokens, 1) / 1e9,
            "lookup_ns": r.ns_per_access,
        }
    out["setup"] = {
        "cache_fraction": cache_fraction,
        "capacity_experts": capacity,
        "num_layers": num_layers,
        "num_experts": num_experts,
        "top_k": trace.top_k,
        "accesses": int(stream.keys.size),
        "expert_bytes": expert_bytes,
        "prefill_chunk": prefill_chunk,
        **trace_stats(trace),
    }
    return out


def format_cache_bench(result: dict[str, Any]) -> str:
    setup = result["setup"]
    lines = [
        f"trace: {int(setup['tokens'])} tokens, {setup['num_layers']} MoE layers x {setup['num_experts']} experts, "
        f"top-{setup['top_k']}; next-token expert overlap {setup['next_token_overlap']:.2f}, "
        f"top-20% experts take {setup['top20pct_share']:.2f} of the routing",
        f"cache: {setup['cache_fraction']:.0%} of all routed experts = {setup['capacity_experts']} experts "
        f"({setup['capacity_experts'] * setup['expert_bytes'] / 1e9:.1f} GB at {setup['expert_bytes'] / 1e6:.1f} MB each)",
        "",
        f"{'policy':<11} {'hit rate':>9} {'gap closed':>11} {'GB/token':>9} {'decode hit':>11} {'ns/lookup':>10}",
    ]
    for name in (*POLICY_KEYS, "oracle_a0", "oracle_a0_next"):
        if name not in result:
            continue
        r = result[name]
        lines.append(
            f"{name:<11} {r['hit_rate']:>9.4f} {r['gap_closed']:>11.3f} {r['gb_per_token']:>9.3f} "
            f"{r['decode_hit_rate']:>11.4f} {r['lookup_ns']:>10.0f}"
        )
    target = result["lru"]["hit_rate"] + 0.5 * (result["opt"]["hit_rate"] - result["lru"]["hit_rate"])
    met = "met" if result["kimi_local"]["hit_rate"] >= target else "NOT met"
    lines += ["", f"target (LRU + half the LRU-to-OPT gap) = {target:.4f}: {met}"]
    if "oracle_a0" in result:
        lines.append(f"oracle_a0 knows the generator's per-sequence expert probabilities (not the draws): the best "
                     f"an online policy can expect here closes about {result['oracle_a0']['gap_closed']:.2f} of the gap")
        lines.append(f"oracle_a0_next also knows each next layer step's experts exactly (a perfect prefetch "
                     f"prediction) and keeps them: {result['oracle_a0_next']['gap_closed']:.2f}")
    return "\n".join(lines)
