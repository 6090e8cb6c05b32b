"""Routed (token, expert) pairs grouped by expert: the form the MoE kernel (`cpu_moe`) walks, and which of its
two kernels each expert takes.

A layer call routes T tokens to k experts each. The kernel wants, per expert, the slots (token, weight) that
go to it, contiguous, and the offsets of its activations in the scratch buffers: row buffers for the experts
served by the GEMV (up to GEMV_MAX_TOKENS tokens), LANES-token panel buffers for the ones served by the GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kimi_local.kernels.cpu_jit import jit
from kimi_local.kernels.cpu_simd import DOT_TOKENS, LANES

# An expert with more tokens than this goes through the decode-once GEMM. The GEMV decodes each code once
# per DOT_TOKENS tokens, the GEMM once in all but pays a full LANES-wide FMA per weight and panel: on AVX-512
# they cost the same at 13-14 tokens (`kimi-local bench kernels` shapes, one thread).
GEMV_MAX_TOKENS = 3 * DOT_TOKENS


@dataclass(frozen=True)
class Routing:
    """Routed (token, expert) pairs grouped by expert, the form the kernel walks.

    Expert `e` (an index into the caller's expert list) owns slots `starts[e]:starts[e + 1]`; slot `m` is
    token `tokens[m]` with routing weight `weights[m]`. Experts above GEMV_MAX_TOKENS have their activations
    in `panel_offsets[e]`-based panel buffers, the others in `row_offsets[e]`-based row buffers."""

    starts: np.ndarray  # int64 [E + 1]
    tokens: np.ndarray  # int64 [T * k]
    weights: np.ndarray  # float32 [T * k]
    panel_offsets: np.ndarray  # int64 [E + 1], in panels (LANES tokens each)
    row_offsets: np.ndarray  # int64 [E + 1], in rows (one token each)
    gemv_experts: np.ndarray  # int64: the experts with 1..GEMV_MAX_TOKENS tokens
    tile_experts: np.ndarray  # int64: the experts with more


def group_routing(topk_ids: np.ndarray, topk_weights: np.ndarray, expert_ids: np.ndarray) -> Routing:
    """`topk_ids [T, k]` (global expert ids) to slots grouped by position in `expert_ids` (distinct ids).
    Compiled (one call): a decode step's layer pays microseconds here, not the half millisecond that a dozen
    numpy calls cost once the weight stream has pushed the interpreter out of the CPU caches."""
    ids = np.ascontiguousarray(topk_ids, dtype=np.int64)
    weights = np.ascontiguousarray(topk_weights, dtype=np.float32)
    experts = np.ascontiguousarray(expert_ids, dtype=np.int64)
    if ids.ndim != 2 or weights.shape != ids.shape or experts.ndim != 1 or experts.size == 0:
        raise ValueError(f"need topk_ids and topk_weights [T, k] of one shape and a non-empty list of expert ids, "
                         f"got {ids.shape}, {weights.shape} and {experts.shape}")
    problem, value, *arrays = _group(ids, weights, experts)
    if problem == 1:
        raise ValueError(f"expert_ids must be distinct: {value} appears twice")
    if problem == 2:
        raise ValueError(f"topk_ids routes to expert {value}, which is not in expert_ids")
    return Routing(*arrays)


@jit
def _group(ids, weights, experts):
    """group_routing's body: (0, 0, the Routing arrays) or (problem, the id at fault, empty arrays): 1 = an id
    twice in `experts`, 2 = a routed id not in `experts`."""
    num_experts = experts.size
    order = np.argsort(experts, kind="mergesort")
    sorted_ids = experts[order]
    for i in range(num_experts - 1):
        if sorted_ids[i] == sorted_ids[i + 1]:
            return _failed(1, sorted_ids[i])
    flat = ids.reshape(-1)
    position = np.empty(flat.size, np.int64)  # of each routed pair's expert in the caller's list
    counts = np.zeros(num_experts, np.int64)
    for m in range(flat.size):
        j = np.searchsorted(sorted_ids, flat[m])
        if j == num_experts or sorted_ids[j] != flat[m]:
            return _failed(2, flat[m])
        position[m] = order[j]
        counts[order[j]] += 1
    starts = np.zeros(num_experts + 1, np.int64)
    panel_offsets = np.zeros(num_experts + 1, np.int64)
    row_offsets = np.zeros(num_experts + 1, np.int64)
    num_gemv, num_tiled = 0, 0
    for e in range(num_experts):
        tiled = counts[e] > GEMV_MAX_TOKENS
        starts[e + 1] = starts[e] + counts[e]
        panel_offsets[e + 1] = panel_offsets[e] + ((counts[e] + LANES - 1) // LANES if tiled else 0)
        row_offsets[e + 1] = row_offsets[e] + (0 if tiled else counts[e])
        num_tiled += tiled
        num_gemv += counts[e] > 0 and not tiled
    k = ids.shape[1]
    tokens = np.empty(flat.size, np.int64)
    slot_weights = np.empty(flat.size, np.float32)
    filled = starts[:-1].copy()
    flat_weights = weights.reshape(-1)
    for m in range(flat.size):  # in order: each expert's slots stay in token order (stable)
        slot = filled[position[m]]
        tokens[slot] = m // k
        slot_weights[slot] = flat_weights[m]
        filled[position[m]] += 1
    gemv_experts = np.empty(num_gemv, np.int64)
    tile_experts = np.empty(num_tiled, np.int64)
    num_gemv, num_tiled = 0, 0
    for e in range(num_experts):
        if counts[e] > GEMV_MAX_TOKENS:
            tile_experts[num_tiled] = e
            num_tiled += 1
        elif counts[e] > 0:
            gemv_experts[num_gemv] = e
            num_gemv += 1
    return 0, 0, starts, tokens, slot_weights, panel_offsets, row_offsets, gemv_experts, tile_experts


@jit
def _failed(problem, value):
    none = np.zeros(0, np.int64)
    return problem, value, none, none, np.zeros(0, np.float32), none, none, none, none


@jit
def largest_groups(panel_offsets, row_offsets):
    """The most panels and the most GEMV rows any one expert has (at least 1: scratch sizes)."""
    max_panels, max_rows = 1, 1
    for e in range(panel_offsets.size - 1):
        max_panels = max(max_panels, panel_offsets[e + 1] - panel_offsets[e])
        max_rows = max(max_rows, row_offsets[e + 1] - row_offsets[e])
    return max_panels, max_rows
