"""Prefill: the block-fp8 GEMM `Y = X W^T` for a batch of tokens that use the same weight.

With many tokens the arithmetic, not the weight stream, is the cost, so each weight is decoded once and reused
for every token, in the BLAS broadcast form:

* activations are packed into panels of LANES tokens, transposed (`pack_activations`: panel [K, LANES], one
  token per vector lane);
* a block of up to GEMM_ROWS weight rows walks K in chunks of K_CHUNK columns; per chunk `decode_tile` turns
  the block's codes into true float32 values (block scale applied) in a small tile, 192 x 128 floats (zero
  rows past the last, up to a whole TILE_ROWS group);
* the micro-kernel `f32_tile` (`cpu_simd`) then broadcasts each tile value against a panel row and keeps
  TILE_ROWS x LANES sums in registers over the whole chunk, adding them to the output block at the end.

The tile and the panels' chunk slice stay in L2 while every panel and every TILE_ROWS group of the block goes
by, so a panel is read from memory once per block of rows, and a weight byte once in all.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from kimi_local.kernels.cpu_checks import check_activations, check_fp8_weight
from kimi_local.kernels.cpu_jit import jit, parallel_jit
from kimi_local.kernels.cpu_decode import HALF_BIAS_SHIFT, e4m3_half_bits, half_to_float
from kimi_local.kernels.cpu_simd import DOT_STEP, LANES, TILE_ROWS, e4m3_decode, f32_tile
from kimi_local.model.fp8 import BLOCK, dequantize

# A block of GEMM_ROWS weight rows x K_CHUNK columns is decoded at a time: 192 x 128 float32 = 96 KiB, in L2
# with the activation panels' K_CHUNK slice, so the panels stream from memory once per block, not per tile.
GEMM_ROWS = 8 * TILE_ROWS
K_CHUNK = 128


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@jit
def decode_row(codes, scales, r, k0, k_end, out, j):
    """out[j, k - k0] = W[r, k] for k0 <= k < k_end. (Indices, not row views: this runs per row and K chunk,
    overhead counts.)"""
    k = k0
    while k < k_end:
        block = k // BLOCK
        stop = min(k_end, (block + 1) * BLOCK)
        s = scales[r // BLOCK, block] * np.float32(HALF_BIAS_SHIFT)
        main = (stop - k) // DOT_STEP * DOT_STEP
        e4m3_decode(codes, r, k, main, s, out, j, k - k0)
        for i in range(k + main, stop):
            out[j, i - k0] = half_to_float(e4m3_half_bits(codes[r, i])) * s
        k = stop


@jit
def decode_tile(codes, scales, r0, r1, k0, klen, tile):
    """tile[j, i] = W[r0 + j, k0 + i] for i < klen (k0 + klen <= K) and j < r1 - r0 rounded up to TILE_ROWS,
    zero for the rows past r1."""
    for j in range((r1 - r0 + TILE_ROWS - 1) // TILE_ROWS * TILE_ROWS):
        if r0 + j >= r1:
            tile[j, :klen] = 0.0
        else:
            decode_row(codes, scales, r0 + j, k0, k0 + klen, tile, j)


@parallel_jit
def _dequantize_rows(codes, scales, r0, r1, out):
    for r in prange(r0, r1):
        decode_row(codes, scales, r, 0, codes.shape[1], out, r - r0)


def dequantize_rows(codes: np.ndarray, scales: np.ndarray, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
    """out[:r1 - r0] = W[r0:r1] as float32, in parallel (for a float32 matmul library at large T: see
    `cpu_linear`). `out`: float32 C-order [>= r1 - r0, K]; returns that slice. Checked like the kernels."""
    codes, scales = check_fp8_weight("weight", codes, scales)
    if not 0 <= r0 <= r1 <= codes.shape[0]:
        raise ValueError(f"rows [{r0}, {r1}) out of range for a weight with {codes.shape[0]} rows")
    if (out.dtype != np.float32 or out.ndim != 2 or not out.flags.c_contiguous or out.shape[0] < r1 - r0
            or out.shape[1] != codes.shape[1]):
        raise ValueError(f"out must be float32 C-order [>= {r1 - r0}, {codes.shape[1]}], got {out.dtype} "
                         f"{list(out.shape)}")
    _dequantize_rows(codes, scales, r0, r1, out)
    return out[: r1 - r0]


@jit
def gemm_rows(codes, scales, panels, r0, r1, tile, out):
    """out[p, j, l] = sum_k W[r0 + j, k] * panels[p, k, l] for j < r1 - r0, every panel p and lane l.

    panels: float32 [P, K, LANES], the activations of P * LANES tokens packed by `pack_activations`;
    tile: float32 [>= rows rounded up to TILE_ROWS, >= min(K_CHUNK, K)] scratch; out: float32 [P, >= that
    many rows, LANES]."""
    num_cols = codes.shape[1]
    out[:] = 0.0
    for k0 in range(0, num_cols, K_CHUNK):
        klen = min(K_CHUNK, num_cols - k0)
        decode_tile(codes, scales, r0, r1, k0, klen, tile)
        for p in range(panels.shape[0]):
            panel = panels[p]
            out_p = out[p]
            for j0 in range(0, r1 - r0, TILE_ROWS):
                f32_tile(panel, k0, tile, j0, klen, out_p)


@parallel_jit
def _fp8_gemm(codes, scales, panels, y):
    num_rows = codes.shape[0]
    num_tasks = (num_rows + GEMM_ROWS - 1) // GEMM_ROWS
    for task in prange(num_tasks):
        r0 = task * GEMM_ROWS
        r1 = min(num_rows, r0 + GEMM_ROWS)
        tile = np.empty((GEMM_ROWS, min(K_CHUNK, codes.shape[1])), np.float32)
        part = np.empty((panels.shape[0], GEMM_ROWS, LANES), np.float32)
        gemm_rows(codes, scales, panels, r0, r1, tile, part)
        for t in range(y.shape[0]):
            y[t, r0:r1] = part[t // LANES, : r1 - r0, t % LANES]


def pack_activations(x: np.ndarray) -> np.ndarray:
    """x [T, K] as float32 panels [ceil(T / LANES), K, LANES]: panel p, lane l holds token p * LANES + l
    (zero past T). Each panel is read front to back by the micro-kernel."""
    num_tokens, num_cols = x.shape
    padded = np.zeros((round_up(num_tokens, LANES), num_cols), np.float32)
    padded[:num_tokens] = x
    return np.ascontiguousarray(padded.reshape(-1, LANES, num_cols).transpose(0, 2, 1))


def fp8_gemm(codes: np.ndarray, scales: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`x @ W^T` for uint8 e4m3 codes `[N, K]`, float32 ceil-grid scales and float32 `x [T, K]`; float32 `[T, N]`."""
    codes, scales = check_fp8_weight("weight", codes, scales)
    x = check_activations("x", x, codes.shape[1], ndim=2)
    num_tokens = x.shape[0]
    y = np.empty((num_tokens, codes.shape[0]), np.float32)
    if num_tokens:
        _fp8_gemm(codes, scales, pack_activations(x), y)
    return y


def fp8_gemm_reference(codes: np.ndarray, scales: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The rule itself: dequantize (`model.fp8.dequantize`), then a float64 matrix product."""
    return (np.asarray(x, np.float64) @ dequantize(codes, scales).astype(np.float64).T).astype(np.float32)
