"""Replay a routing trace through an eviction policy; Belady's OPT as the offline optimum.

Access order. The store sees what the model asks for, one MoE layer step at a time (each step announced to the
policy with its token count, `begin_step`):
- a decode token asks, for layer 1, 2, ... in turn, for that layer's k experts (k accesses per layer);
- prefill is batched per layer: a prefill chunk of `prefill_chunk` prompt tokens runs each layer once over the
  whole chunk, so it touches each layer's union of the chunk's experts once (one access per distinct expert,
  in ascending id order), however many of the chunk's tokens chose it. The policy is told how many tokens
  chose the expert (`weight`), as the real store is.
Each layer step is a group: its experts are all needed at once (the compute kernel reads them together), so
the simulator pins a group's experts until the group is done, exactly as the store leases them. A group
larger than the cache is split into pieces that fit.

Hit rate = hits / accesses over all groups. OPT is Belady's MIN (on a miss with a full cache, evict the
resident whose next use is furthest away) over the same flat access sequence, without the group pinning:
relaxing a constraint only helps it, so it bounds every demand-paging policy from above.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from kimi_local.cache.policy import EvictionPolicy
from kimi_local.cache.traces import DECODE, PREFILL, RoutingTrace

KIMI_EXPERT_BYTES = 3 * 2048 * 7168 + 3 * 16 * 56 * 4  # three fp8 [2048, 7168] matrices + their fp32 scales


@dataclass(frozen=True)
class AccessStream:
    """A trace flattened into the store's access order (see the module docstring)."""

    keys: np.ndarray  # int32 [n]: layer * num_experts + expert
    weights: np.ndarray  # float32 [n]: tokens that chose the expert in this access (1 for decode)
    group_starts: np.ndarray  # int64 [g + 1]: group j is keys[group_starts[j]:group_starts[j + 1]]
    group_phase: np.ndarray  # uint8 [g]
    group_seq: np.ndarray  # int32 [g]: the sequence each group belongs to
    group_tokens: np.ndarray  # int32 [g]: tokens in the group's layer step (the chunk; 1 for decode)
    num_layers: int
    num_experts: int
    num_tokens: int
    num_decode_tokens: int

    @property
    def num_keys(self) -> int:
        return self.num_layers * self.num_experts


def access_stream(trace: RoutingTrace, prefill_chunk: int = 512) -> AccessStream:
    if prefill_chunk < 1:
        raise ValueError(f"prefill_chunk = {prefill_chunk} must be >= 1")
    num_layers, num_experts = trace.num_layers, trace.num_experts
    layer_base = (np.arange(num_layers, dtype=np.int32) * num_experts)[:, None]  # [L, 1]
    keys: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    phases: list[np.ndarray] = []
    tokens: list[np.ndarray] = []
    seqs: list[np.ndarray] = []
    for s in range(trace.num_seqs):
        num_groups = len(sizes)
        prefill_ids = np.flatnonzero(trace.phase[s] == PREFILL)
        for start in range(0, prefill_ids.size, prefill_chunk):
            chunk = trace.experts[s, prefill_ids[start : start + prefill_chunk]]  # [c, L, k]
            for layer in range(num_layers):
                ids, counts = np.unique(chunk[:, layer], return_counts=True)
                keys.append(ids.astype(np.int32) + layer_base[layer])
                weights.append(counts.astype(np.float32))
                sizes.append(np.array([ids.size]))
                phases.append(np.array([PREFILL], dtype=np.uint8))
                tokens.append(np.array([chunk.shape[0]]))
        decode = trace.experts[s, trace.phase[s] == DECODE]  # [d, L, k]
        if decode.size:
            keys.append((decode.astype(np.int32) + layer_base).reshape(-1))
            weights.append(np.ones(decode.size, dtype=np.float32))
            sizes.append(np.full(decode.shape[0] * num_layers, trace.top_k))
            phases.append(np.full(decode.shape[0] * num_layers, DECODE, dtype=np.uint8))
            tokens.append(np.ones(decode.shape[0] * num_layers, dtype=np.int64))
        seqs += [np.full(a.size, s, dtype=np.int32) for a in sizes[num_groups:]]
    size_arr = np.concatenate(sizes)
    return AccessStream(
        keys=np.concatenate(keys),
        weights=np.concatenate(weights),
        group_starts=np.concatenate([[0], np.cumsum(size_arr)]).astype(np.int64),
        group_phase=np.concatenate(phases),
        group_seq=np.concatenate(seqs),
        group_tokens=np.concatenate(tokens).astype(np.int32),
        num_layers=num_layers,
        num_experts=num_experts,
        num_tokens=trace.num_tokens,
        num_decode_tokens=int((trace.phase == DECODE).sum()),
    )


@dataclass(frozen=True)
class SimResult:
    policy: str
    capacity: int
    accesses: int
    hits: int
    decode_accesses: int
    decode_hits: int
    seconds: float  # wall time inside the policy calls' loop

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.accesses, 1)

    @property
    def misses(self) -> int:
        return self.accesses - self.hits

    @property
    def decode_hit_rate(self) -> float:
        return self.decode_hits / max(self.decode_accesses, 1)

    @property
    def ns_per_access(self) -> float:
        return 1e9 * self.seconds / max(self.accesses, 1)


def simulate(stream: AccessStream, policy: EvictionPolicy, capacity: int) -> SimResult:
    """Replay `stream` through `policy` holding at most `capacity` experts (the store's protocol)."""
    if capacity < 1:
        raise ValueError(f"capacity = {capacity} must be >= 1")
    keys = stream.keys.tolist()
    weights = stream.weights.tolist()
    starts = stream.group_starts.tolist()
    is_decode = (stream.group_phase == DECODE).tolist()
    layers = (stream.keys[stream.group_starts[:-1]] // stream.num_experts).tolist()
    tokens = stream.group_tokens.tolist()
    resident: set[int] = set()
    hits = decode_hits = decode_accesses = 0
    begin_step, access, admit, remove, victim, pin, unpin = (
        policy.begin_step, policy.access, policy.admit, policy.remove, policy.victim, policy.pin, policy.unpin
    )
    t0 = time.perf_counter()
    for g, decode in enumerate(is_decode):
        lo, hi = starts[g], starts[g + 1]
        begin_step(layers[g], tokens[g])
        for piece in range(lo, hi, capacity):  # a group bigger than the cache runs in pieces that fit
            group = keys[piece : min(hi, piece + capacity)]
            group_hits = 0
            for i, key in enumerate(group):
                pin(key)  # leased first, as the store does: the lookup then never re-keys a pinned key
                access(key, weights[piece + i])
                if key in resident:
                    group_hits += 1
                else:
                    if len(resident) >= capacity:
                        old = victim()
                        remove(old)
                        resident.discard(old)
                    admit(key)
                    resident.add(key)
            for key in group:
                unpin(key)
            hits += group_hits
            if decode:
                decode_hits += group_hits
                decode_accesses += len(group)
    seconds = time.perf_counter() - t0
    return SimResult(policy.name, capacity, len(keys), hits, decode_accesses, decode_hits, seconds)


def next_use(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """For each position i, the next position j > i with keys[j] == keys[i] (len(keys) if none)."""
    n = keys.size
    order = np.lexsort((np.arange(n), keys))  # by key, then position
    nxt = np.full(n, n, dtype=np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def simulate_opt(stream: AccessStream, capacity: int) -> SimResult:
    """Belady's MIN: evict the resident whose next use is furthest in the future (lazy max-heap)."""
    if capacity < 1:
        raise ValueError(f"capacity = {capacity} must be >= 1")
    keys = stream.keys.tolist()
    nxt = next_use(stream.keys, stream.num_keys).tolist()
    decode_pos = np.repeat(stream.group_phase == DECODE, np.diff(stream.group_starts)).tolist()
    resident_next: dict[int, int] = {}  # key -> position of its next use
    heap: list[tuple[int, int]] = []  # (-next_use, key); stale when resident_next disagrees
    hits = decode_hits = 0
    t0 = time.perf_counter()
    for i, key in enumerate(keys):
        if key in resident_next:
            hits += 1
            decode_hits += decode_pos[i]
        elif len(resident_next) >= capacity:
            while True:
                neg, old = heapq.heappop(heap)
                if resident_next.get(old) == -neg:
                    del resident_next[old]
                    break
        resident_next[key] = nxt[i]
        heapq.heappush(heap, (-nxt[i], key))
        if len(heap) > 4 * capacity + 64:  # drop stale entries now and then
            heap = [(-n, k) for k, n in resident_next.items()]
            heapq.heapify(heap)
    seconds = time.perf_counter() - t0
    decode_accesses = int(sum(decode_pos))
    return SimResult("opt", capacity, len(keys), hits, decode_accesses, decode_hits, seconds)
