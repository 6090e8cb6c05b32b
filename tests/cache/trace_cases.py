"""Small routing traces with known character, for policy tests: each stresses one way a policy can fail."""

from __future__ import annotations

import numpy as np

from kimi_local.cache.traces import DECODE, RoutingTrace, TraceSpec, synthesize_trace

L, E, K, T = 4, 64, 4, 500


def as_trace(experts: list | np.ndarray, num_experts: int = E) -> RoutingTrace:
    experts = np.asarray(experts, dtype=np.int16)[None]  # one sequence, all decode
    return RoutingTrace(experts=experts, phase=np.full(experts.shape[:2], DECODE, np.uint8), num_experts=num_experts)


def uniform(rng: np.random.Generator) -> RoutingTrace:
    """No structure at all: every policy should tie."""
    return as_trace([[rng.choice(E, K, replace=False) for _ in range(L)] for _ in range(T)])


def skewed(rng: np.random.Generator) -> RoutingTrace:
    """Stationary Zipf popularity per layer, no temporal locality: frequency wins, recency is noise."""
    p = 1.0 / np.arange(1, E + 1) ** 1.0
    p /= p.sum()
    perms = [rng.permutation(E) for _ in range(L)]
    return as_trace([[perms[i][rng.choice(E, K, replace=False, p=p)] for i in range(L)] for _ in range(T)])


def shifting(rng: np.random.Generator, period: int = 20, working_set: int = 8) -> RoutingTrace:
    """Pure recency: small working sets replaced wholesale every `period` tokens; old counts mislead."""
    out = []
    for t in range(T):
        if t % period == 0:
            sets = [rng.choice(E, working_set, replace=False) for _ in range(L)]
        out.append([rng.choice(s, K, replace=False) for s in sets])
    return as_trace(out)


def scan(rng: np.random.Generator, hot: int = 8, every: int = 10, burst: int = 8) -> RoutingTrace:
    """A hot set per layer; every `every` tokens a burst of `burst` tokens sweeps the experts once (a scan, as
    an unrelated prompt would): LRU loses the hot set to each sweep."""
    hot_sets = [rng.choice(E, hot, replace=False) for _ in range(L)]
    out, cursor = [], 0
    for t in range(T):
        out.append([rng.choice(h, K, replace=False) for h in hot_sets])
        if t % every == 0:
            for _ in range(burst):
                out.append([(np.arange(K) + cursor) % E for _ in range(L)])
                cursor += K
    return as_trace(out)


def synthetic(seed: int = 0) -> RoutingTrace:
    return synthesize_trace(TraceSpec(num_layers=L, num_experts=E, top_k=K, num_seqs=4, prefill_tokens=32,
                                      decode_tokens=128, seed=seed))


CASES = {"uniform": uniform, "skewed": skewed, "shifting": shifting, "scan": scan}
