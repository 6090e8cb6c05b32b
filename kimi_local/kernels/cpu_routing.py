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
    """`topk_ids [T, k]` (global expert ids) to slots grouped by position in `expert_ids`."""
    order = np.argsort(expert_ids, kind="stable")
    sorted_ids = expert_ids[order]
    flat = topk_ids.reshape(-1)
    pos = np.searchsorted(sorted_ids, flat)
    pos_clipped = np.minimum(pos, len(sorted_ids) - 1)
    missing = sorted_ids[pos_clipped] != flat
    if missing.any():
        raise ValueError(f"topk_ids routes to expert {int(flat[missing][0])}, which is not in expert_ids")
    index = order[pos_clipped]  # position of each routed pair's expert in the caller's list
    slot_order = np.argsort(index, kind="stable")
    counts = np.bincount(index, minlength=len(expert_ids))
    starts = np.zeros(len(expert_ids) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    is_tiled = counts > GEMV_MAX_TOKENS
    panels = np.where(is_tiled, -(-counts // LANES), 0)
    rows = np.where(is_tiled, 0, counts)
    panel_offsets = np.zeros(len(expert_ids) + 1, np.int64)
    row_offsets = np.zeros(len(expert_ids) + 1, np.int64)
    np.cumsum(panels, out=panel_offsets[1:])
    np.cumsum(rows, out=row_offsets[1:])
    k = topk_ids.shape[1]
    return Routing(
        starts=starts,
        tokens=(slot_order // k).astype(np.int64),
        weights=np.ascontiguousarray(topk_weights.reshape(-1)[slot_order], dtype=np.float32),
        panel_offsets=panel_offsets,
        row_offsets=row_offsets,
        gemv_experts=np.flatnonzero(rows).astype(np.int64),
        tile_experts=np.flatnonzero(panels).astype(np.int64),
    )


@jit
def largest_groups(panel_offsets, row_offsets):
    """The most panels and the most GEMV rows any one expert has (at least 1: scratch sizes)."""
    max_panels, max_rows = 1, 1
    for e in range(panel_offsets.size - 1):
        max_panels = max(max_panels, panel_offsets[e + 1] - panel_offsets[e])
        max_rows = max(max_rows, row_offsets[e + 1] - row_offsets[e])
    return max_panels, max_rows
