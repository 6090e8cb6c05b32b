"""The fused routed-expert FFN for one MoE layer on the CPU:

    out[t] = sum over the k experts e chosen by token t of  w[t, e] * down_e( silu(gate_e(x[t])) * up_e(x[t]) )

for all experts used in the layer at once, weights in native block-fp8 (`ExpertWeights`, zero-copy views).
Each expert goes through one of two kernels, by how many tokens it got:

* up to GEMV_MAX_TOKENS (decode, small prefill batches): `gemv_rows`, the weight-streaming GEMV (decode in
  registers, once per 4 tokens, two rows in L1 while the tokens go by);
* more (prefill): `gemm_rows`, each weight decoded once into a float32 tile for the broadcast micro-kernel
  over LANES-token panels; its activations are packed once per call and phase 1 writes its `h` straight in
  the panel layout phase 2 reads.

Work is split by weight rows, never by expert, so both cores stay busy whatever the routing skew, and all
work is handed out through shared counters (`cpu_sched`), so a thread that loses its core takes less:

* phase 1 (gate, up): the GEMV experts' gate and up matrices are laid end to end as one virtual row space
  handed out in guided runs (long first, short at the end), so a thread streams long stretches of weight
  bytes (the same bytes in many short runs, one per expert and item, streamed 5-10% slower here: each run
  starts cold); GEMM items take a range of the I rows for every tiled expert;
* phase 2 (down): the same for the down matrices (GEMV runs form h = silu(gate) * up as they go); GEMM items
  own their output columns and add their weighted results directly, GEMV runs write per-token rows that a
  last pass adds in slot order.

Both phases run in one parallel region without a barrier between them: a thread that runs out of phase 1
work starts on phase 2 at once, and a down run waits only until its own expert's gate and up rows are done
(counted per expert), which, with the experts in order, has long happened except at the very end. With a
barrier, every layer paid for the slower thread's last phase 1 item (measured 0.1-0.5 ms of 15 here).
The short passes around the region (packing a decode step's inputs, adding the GEMV outputs) run on the
calling thread, since waking the others (and waiting for one that lost its core) would cost more than they do;
they and the region are one compiled call (`_moe_layer`), and the wrapper around it does as little
interpreted work as it can (`cpu_workspace` says why that matters).

Results do not depend on the thread count or item boundaries (each output is summed in a fixed order).
Expert weights reach the kernels as a table of addresses (`cpu_views`), checked once per expert object and
kept alive by the wrapper; scratch buffers and the checked addresses live in a `Workspace` (`cpu_workspace`)
the caller keeps between calls.
"""

from __future__ import annotations

from typing import Sequence

import numba
import numpy as np
from numba import prange

from kimi_local.kernels.cpu_checks import check_activations
from kimi_local.kernels.cpu_gemm import GEMM_ROWS, K_CHUNK, gemm_rows
from kimi_local.kernels.cpu_gemv import gemv_rows
from kimi_local.kernels.cpu_jit import jit, parallel_jit
from kimi_local.kernels.cpu_routing import (  # noqa: F401 (GEMV_MAX_TOKENS, group_routing: re-exported)
    GEMV_MAX_TOKENS, group_routing, largest_groups,
)
from kimi_local.kernels.cpu_sched import (
    ITEMS_PER_THREAD, claim_rows, fetch_add, item_bounds, mark_done, min_run_rows, wait_done,
)
from kimi_local.kernels.cpu_simd import LANES, TILE_ROWS
from kimi_local.kernels.cpu_views import f32_matrix_at, u8_matrix_at
from kimi_local.kernels.cpu_workspace import Workspace
from kimi_local.model.experts import ExpertWeights
from kimi_local.model.fp8 import BLOCK, dequantize

PARALLEL_PACK_ROWS = 64  # activation rows above which phase 0 runs on all threads


@jit
def gemm_block_rows(num_rows):
    """Rows per GEMM block for an item of `num_rows`: at most GEMM_ROWS, as even as whole TILE_ROWS groups
    allow (an item of 256 rows goes as 2 x 128, not 192 + 64: each block streams the panels once)."""
    num_blocks = max(1, (num_rows + GEMM_ROWS - 1) // GEMM_ROWS)
    per_block = (num_rows + num_blocks - 1) // num_blocks
    return max(TILE_ROWS, (per_block + TILE_ROWS - 1) // TILE_ROWS * TILE_ROWS)


@jit
def silu_mul(g, u):
    return g / (np.float32(1.0) + np.exp(-g)) * u


@jit
def _pack_columns(x, starts, tokens, panel_offsets, row_offsets, x_panels, x_rows, k0, k1):
    """Columns [k0, k1) of phase 0: activations of tiled experts into LANES-token panels [K, LANES], the others
    into rows."""
    for e in range(starts.size - 1):
        s0 = starts[e]
        tiled = panel_offsets[e + 1] > panel_offsets[e]
        for m in range(s0, starts[e + 1]):
            src = x[tokens[m]]
            if tiled:
                panel = x_panels[panel_offsets[e] + (m - s0) // LANES]
                lane = (m - s0) % LANES
                for k in range(k0, k1):
                    panel[k, lane] = src[k]
            else:
                x_rows[row_offsets[e] + m - s0, k0:k1] = src[k0:k1]


@parallel_jit
def _pack_parallel(x, starts, tokens, panel_offsets, row_offsets, x_panels, x_rows):
    """Phase 0 split by columns, so it is parallel even when one expert has every token (prefill)."""
    hidden = x.shape[1]
    for chunk in prange((hidden + K_CHUNK - 1) // K_CHUNK):
        k0 = chunk * K_CHUNK
        _pack_columns(x, starts, tokens, panel_offsets, row_offsets, x_panels, x_rows, k0, min(hidden, k0 + K_CHUNK))


@jit
def _pack_serial(x, starts, tokens, panel_offsets, row_offsets, x_panels, x_rows):
    """Phase 0 on the calling thread: a decode step's few rows are not worth waking (and waiting for) others."""
    _pack_columns(x, starts, tokens, panel_offsets, row_offsets, x_panels, x_rows, 0, x.shape[1])


@jit
def expert_matrices(table, e, m, rows, cols):
    """Expert e's codes and scales for matrix m (0: gate, 1: up, 2: down) [rows, cols], from its addresses in
    `table` (int64 [E, 6]: codes, scales of gate, up, down; `cpu_workspace`)."""
    codes = u8_matrix_at(table[e, 2 * m], rows, cols)
    scales = f32_matrix_at(table[e, 2 * m + 1], (rows + BLOCK - 1) // BLOCK, (cols + BLOCK - 1) // BLOCK)
    return codes, scales


@jit
def _gate_up_gemv(table, inter, hidden, row_offsets, gemv_experts, x_rows, gu_rows, v0, v1, xs, gu_done):
    """Phase 1 GEMV work: virtual rows [v0, v1) of the GEMV experts' gate and up matrices laid end to end
    (expert by expert, gate then up), so a run reads one or two long stretches of weights. Each expert's
    finished rows are counted in gu_done[position in gemv_experts]."""
    v = v0
    while v < v1:
        matrix = v // inter  # 2 * position in gemv_experts + (0: gate, 1: up)
        r0 = v - matrix * inter
        r1 = min(inter, r0 + v1 - v)
        e = gemv_experts[matrix // 2]
        codes, scales = expert_matrices(table, e, matrix % 2, inter, hidden)
        rows = x_rows[row_offsets[e] : row_offsets[e + 1]]
        gemv_rows(codes, scales, rows, r0, r1, xs, gu_rows[row_offsets[e] : row_offsets[e + 1], matrix % 2, r0:r1])
        mark_done(gu_done, matrix // 2, r1 - r0)
        v += r1 - r0


@jit
def _gate_up_tiles(table, inter, hidden, panel_offsets, tile_experts, x_panels, h_panels, r_begin, r_end,
                   tile, g_tile, u_tile):
    """A phase 1 GEMM item: rows [r_begin, r_end) of h for every tiled expert."""
    for e in tile_experts:
        gate_q, gate_s = expert_matrices(table, e, 0, inter, hidden)
        up_q, up_s = expert_matrices(table, e, 1, inter, hidden)
        p0, p1 = panel_offsets[e], panel_offsets[e + 1]
        xp = x_panels[p0:p1]
        hp = h_panels[p0:p1]
        step = gemm_block_rows(r_end - r_begin)
        for r0 in range(r_begin, r_end, step):
            r1 = min(r_end, r0 + step)
            gemm_rows(gate_q, gate_s, xp, r0, r1, tile, g_tile[: p1 - p0])
            gemm_rows(up_q, up_s, xp, r0, r1, tile, u_tile[: p1 - p0])
            for p in range(p1 - p0):
                for j in range(r1 - r0):
                    dst = hp[p, r0 + j]
                    g = g_tile[p, j]
                    u = u_tile[p, j]
                    for lane in range(LANES):
                        dst[lane] = silu_mul(g[lane], u[lane])


@jit
def _down_gemv(table, inter, hidden, row_offsets, gemv_experts, gu_rows, y_rows, v0, v1, h, h_of, xs, gu_done):
    """Phase 2 GEMV work: virtual rows [v0, v1) of the GEMV experts' down matrices end to end. Each expert's
    h = silu(gate) * up is formed here, in this thread's scratch, once its gate and up rows are all done, and
    kept for the thread's next runs of the same expert (h_of[0]: whose h it holds)."""
    v = v0
    while v < v1:
        g = v // hidden
        r0 = v - g * hidden
        r1 = min(hidden, r0 + v1 - v)
        e = gemv_experts[g]
        codes, scales = expert_matrices(table, e, 2, hidden, inter)
        count = row_offsets[e + 1] - row_offsets[e]
        if h_of[0] != e:
            wait_done(gu_done, g, 2 * inter)
            for t in range(count):
                gate = gu_rows[row_offsets[e] + t, 0]
                up = gu_rows[row_offsets[e] + t, 1]
                for i in range(inter):
                    h[t, i] = silu_mul(gate[i], up[i])
            h_of[0] = e
        gemv_rows(codes, scales, h[:count], r0, r1, xs, y_rows[row_offsets[e] : row_offsets[e + 1], r0:r1])
        v += r1 - r0


@jit
def _down_tiles(table, inter, hidden, starts, tokens, weights, panel_offsets, tile_experts, h_panels, r_begin, r_end,
                tile, y_tile, out):
    """A phase 2 GEMM item: out[:, r_begin:r_end] += w * down h for every tiled expert (the item owns these
    output columns among the GEMM items, so no synchronization)."""
    for e in tile_experts:
        s0, s1 = starts[e], starts[e + 1]
        down_q, down_s = expert_matrices(table, e, 2, hidden, inter)
        p0, p1 = panel_offsets[e], panel_offsets[e + 1]
        hp = h_panels[p0:p1]
        step = gemm_block_rows(r_end - r_begin)
        for r0 in range(r_begin, r_end, step):
            r1 = min(r_end, r0 + step)
            gemm_rows(down_q, down_s, hp, r0, r1, tile, y_tile[: p1 - p0])
            for m in range(s0, s1):
                dst = out[tokens[m]]
                w = weights[m]
                y = y_tile[(m - s0) // LANES]
                lane = (m - s0) % LANES
                for j in range(r1 - r0):
                    dst[r0 + j] += w * y[j, lane]


@parallel_jit
def _experts_ffn(table, inter, hidden, starts, tokens, weights, row_offsets, panel_offsets, gemv_experts,
                 tile_experts, x_rows, x_panels, gu_rows, h_panels, y_rows, num_tile_items, num_workers, out):
    """Both phases in one parallel region, no barrier between them. Each thread takes, in this order: guided
    runs of the GEMV experts' gate/up rows (into gu_rows), GEMM items of phase 1 (h straight into h_panels),
    guided runs of the GEMV experts' down rows (into y_rows; each waits only for its own expert's gate/up
    rows), GEMM items of phase 2 (weighted, straight into out; they wait for all phase 1 GEMM items).
    table: int64 [E, 6] codes/scales addresses of gate, up, down."""
    max_panels, max_rows = largest_groups(panel_offsets, row_offsets)
    num_gate_up = gemv_experts.size * 2 * inter
    num_down = gemv_experts.size * hidden
    cursors = np.zeros(4, np.int64)  # gate/up rows, phase 1 GEMM items, down rows, phase 2 GEMM items
    gu_done = np.zeros(gemv_experts.size + 1, np.int64)  # gate/up rows done per GEMV expert; last: GEMM items
    for _ in prange(num_workers):
        xs = np.empty((max_rows, max(hidden, inter)), np.float32)
        h = np.empty((max_rows, inter), np.float32)
        h_of = np.full(1, -1, np.int64)  # the expert whose h this thread's `h` holds
        tile = np.empty((GEMM_ROWS, min(K_CHUNK, max(hidden, inter))), np.float32)
        g_tile = np.empty((max_panels, GEMM_ROWS, LANES), np.float32)
        u_tile = np.empty((max_panels, GEMM_ROWS, LANES), np.float32)
        v0, v1 = claim_rows(cursors, 0, num_gate_up, num_workers, min_run_rows(hidden))
        while v0 < v1:
            _gate_up_gemv(table, inter, hidden, row_offsets, gemv_experts, x_rows, gu_rows, v0, v1, xs, gu_done)
            v0, v1 = claim_rows(cursors, 0, num_gate_up, num_workers, min_run_rows(hidden))
        item = fetch_add(cursors, 1, 1)
        while item < num_tile_items:
            r0, r1 = item_bounds(item, num_tile_items, inter)
            _gate_up_tiles(table, inter, hidden, panel_offsets, tile_experts, x_panels, h_panels, r0, r1,
                           tile, g_tile, u_tile)
            mark_done(gu_done, gemv_experts.size, 1)
            item = fetch_add(cursors, 1, 1)
        v0, v1 = claim_rows(cursors, 2, num_down, num_workers, min_run_rows(inter))
        while v0 < v1:
            _down_gemv(table, inter, hidden, row_offsets, gemv_experts, gu_rows, y_rows, v0, v1, h, h_of, xs,
                       gu_done)
            v0, v1 = claim_rows(cursors, 2, num_down, num_workers, min_run_rows(inter))
        item = fetch_add(cursors, 3, 1)
        if item < num_tile_items:
            wait_done(gu_done, gemv_experts.size, num_tile_items)
        while item < num_tile_items:
            r0, r1 = item_bounds(item, num_tile_items, hidden)
            _down_tiles(table, inter, hidden, starts, tokens, weights, panel_offsets, tile_experts, h_panels,
                        r0, r1, tile, g_tile, out)
            item = fetch_add(cursors, 3, 1)


@jit
def _moe_layer(table, inter, hidden, x, starts, tokens, weights, row_offsets, panel_offsets, gemv_experts,
               tile_experts, x_rows, x_panels, gu_rows, h_panels, y_rows, workers, out):
    """Phases 0-3 in one compiled call: the wrapper's interpreted work per layer is what stalls a decode step
    once the weight stream has pushed the interpreter out of the CPU caches (each Python-level call then costs
    tens of microseconds)."""
    if (panel_offsets[-1] * LANES + row_offsets[-1]) > PARALLEL_PACK_ROWS:
        _pack_parallel(x, starts, tokens, panel_offsets, row_offsets, x_panels, x_rows)
    else:
        _pack_serial(x, starts, tokens, panel_offsets, row_offsets, x_panels, x_rows)
    tile_items = ITEMS_PER_THREAD * workers if tile_experts.size else 0
    _experts_ffn(table, inter, hidden, starts, tokens, weights, row_offsets, panel_offsets, gemv_experts,
                 tile_experts, x_rows, x_panels, gu_rows, h_panels, y_rows, tile_items, workers, out)
    _add_gemv_outputs(starts, tokens, weights, row_offsets, gemv_experts, y_rows, out)


@jit
def _add_gemv_outputs(starts, tokens, weights, row_offsets, gemv_experts, y_rows, out):
    """Phase 3: out[t] += w * y for the GEMV experts' rows, in slot order (deterministic). On the calling
    thread: a few rows in decode, a small part of the work in prefill, and no barrier to wait at."""
    for e in gemv_experts:
        s0 = starts[e]
        for m in range(s0, starts[e + 1]):
            dst = out[tokens[m]]
            y = y_rows[row_offsets[e] + m - s0]
            w = weights[m]
            for c in range(dst.size):
                dst[c] += w * y[c]


def moe_forward(x: np.ndarray, topk_ids: np.ndarray, topk_weights: np.ndarray, expert_ids: Sequence[int],
                experts: Sequence[ExpertWeights], workspace: Workspace | None = None) -> np.ndarray:
    """sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]) as float32 [T, H] (a new array).

    x: float32 [T, H]; topk_ids: int [T, k], each id in `expert_ids`; topk_weights: float32 [T, k];
    experts[i]: the weights of expert expert_ids[i] (distinct ids; an expert without tokens is skipped).
    Runs on the calling thread's Numba thread count (`numba.set_num_threads`); `workspace` keeps scratch
    buffers between calls (a fresh one if omitted)."""
    if len(experts) == 0 or len(experts) != len(expert_ids):
        raise ValueError(f"need one ExpertWeights per expert id: got {len(experts)} experts for "
                         f"{len(expert_ids)} ids")
    ws = workspace or Workspace()
    table, alive = ws.weight_table(experts)  # `experts` and `alive` outlive the kernel call
    inter, hidden = experts[0].gate_q.shape
    x = check_activations("x", x, hidden, ndim=2)
    topk_ids = np.asarray(topk_ids)
    topk_weights = np.asarray(topk_weights, dtype=np.float32)
    if topk_ids.ndim != 2 or topk_ids.shape[0] != x.shape[0] or topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_ids {topk_ids.shape} and topk_weights {topk_weights.shape} must both be "
                         f"[T, k] with T = {x.shape[0]} (the rows of x)")
    ids = np.asarray(expert_ids, dtype=np.int64)
    out = np.zeros((x.shape[0], hidden), np.float32)
    if x.shape[0] == 0:
        return out
    r = group_routing(topk_ids, topk_weights, ids)
    x_panels, h_panels, x_rows, gu_rows, y_rows = ws.scratch(r, hidden, inter)
    workers = numba.get_num_threads()  # this thread's Numba thread count (set by the caller)
    _moe_layer(table, inter, hidden, x, r.starts, r.tokens, r.weights, r.row_offsets, r.panel_offsets,
               r.gemv_experts, r.tile_experts, x_rows, x_panels, gu_rows, h_panels, y_rows, workers, out)
    return out


def moe_forward_reference(x: np.ndarray, topk_ids: np.ndarray, topk_weights: np.ndarray,
                          expert_ids: Sequence[int], experts: Sequence[ExpertWeights]) -> np.ndarray:
    """The definition, in float64 on dequantized weights (`model.fp8.dequantize`)."""
    x64 = np.asarray(x, np.float64)
    out = np.zeros_like(x64)
    position = {int(e): i for i, e in enumerate(expert_ids)}
    for t in range(x64.shape[0]):
        for e, w in zip(topk_ids[t], topk_weights[t]):
            ew = experts[position[int(e)]]
            gate = dequantize(ew.gate_q, ew.gate_s).astype(np.float64) @ x64[t]
            up = dequantize(ew.up_q, ew.up_s).astype(np.float64) @ x64[t]
            h = gate / (1.0 + np.exp(-gate)) * up
            out[t] += float(w) * (dequantize(ew.down_q, ew.down_s).astype(np.float64) @ h)
    return out.astype(np.float32)
