"""Decode: the block-fp8 GEMV `y = W x` for one token (or a few), streaming the weight bytes once.

    W[n, k] = e4m3(Wq[n, k]) * S[n // 128, k // 128]

The block scale moves onto the activation: rows inside one 128-row scale block share a scale row, so each row
is a dot product of its decoded codes with `xs[k] = x[k] * S[rb, k // 128] * 256` (the 256 undoes the
decode's 2^-8, see `cpu_decode`). `e4m3_dot_2xT` takes two rows per pass, decodes in registers (once for up to
4 tokens) and prefetches ahead; for one token it forms xs in registers, step by step, from `x * 256` and the
scale row, for several it reads xs built once per row block. The weight bytes are read once, in address order,
and never written anywhere. The last `K % DOT_STEP` columns of each row go through the scalar form of the same
decode.

Work is handed out to the threads in guided runs of rows (`cpu_sched.claim_rows`): long first, short last.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from kimi_local.kernels.cpu_checks import check_activations, check_fp8_weight
from kimi_local.kernels.cpu_decode import HALF_BIAS_SHIFT, e4m3_half_bits, half_to_float
from kimi_local.kernels.cpu_jit import jit, parallel_jit
from kimi_local.kernels.cpu_sched import claim_rows, min_run_rows
from kimi_local.kernels.cpu_simd import (
    DOT_STEP, DOT_TOKENS, e4m3_dot_1x1, e4m3_dot_2x1, e4m3_dot_2x2, e4m3_dot_2x3, e4m3_dot_2x4, one_token_input,
    prefetch_head,
)
from kimi_local.model.fp8 import BLOCK, dequantize


@jit
def scale_activation(x, scale_row, xs):
    """xs[k] = x[k] * scale_row[k // 128] * 256 for k < x.size."""
    num_cols = x.size
    for kb in range(scale_row.size):
        s = scale_row[kb] * np.float32(HALF_BIAS_SHIFT)
        k0 = kb * BLOCK
        k1 = min(num_cols, k0 + BLOCK)
        src = x[k0:k1]
        dst = xs[k0:k1]
        for i in range(src.size):
            dst[i] = src[i] * s


@jit
def e4m3_dot_tail(codes, row, xs, xs_row, start):
    """Columns `start:` of row `row`'s dot product with xs[xs_row], one code at a time."""
    acc = np.float32(0.0)
    for k in range(start, codes.shape[1]):
        acc += half_to_float(e4m3_half_bits(codes[row, k])) * xs[xs_row, k]
    return acc


@jit
def e4m3_dot_tail_scaled(codes, row, x, start, scale_row):
    """Columns `start:` of row `row`'s dot product with the unscaled x, each column's block scale applied."""
    acc = np.float32(0.0)
    for k in range(start, codes.shape[1]):
        s = scale_row[k // BLOCK] * np.float32(HALF_BIAS_SHIFT)
        acc += half_to_float(e4m3_half_bits(codes[row, k])) * (x[k] * s)
    return acc


@jit
def store_pair(y, sums, t0, num_tokens, col):
    """A row pair's sums (row-major, `num_tokens` per row) into y[t0 + t, col] and y[t0 + t, col + 1]."""
    for t in range(num_tokens):
        y[t0 + t, col] = sums[t]
        y[t0 + t, col + 1] = sums[num_tokens + t]


@jit
def gemv_rows(codes, scales, x, r0, r1, xs, y):
    """y[t, r - r0] = sum_k W[r, k] * x[t, k] for rows r0 <= r < r1 and each of the few tokens t < x.shape[0].

    Rows go two at a time; each code is decoded once for up to DOT_TOKENS tokens (more tokens take more
    passes over the same two rows, which are then in L1). A token left alone in its pass (the only one, in
    decode) takes the one-token dots, which apply the block scales themselves: its xs row is prepared once per
    call, and nothing but dot products runs between the weight reads. The others' xs rows are scaled per
    128-row block. xs: float32 scratch [>= tokens, >= K]; y: float32 [>= tokens, >= r1 - r0]."""
    num_tokens = x.shape[0]
    num_cols = codes.shape[1]
    main = num_cols - num_cols % DOT_STEP
    lone = num_tokens % DOT_TOKENS == 1  # the last token goes alone
    several = num_tokens - 1 if lone else num_tokens  # the tokens in passes of 2..DOT_TOKENS
    last = num_tokens - 1
    prefetch_head(codes, r0, r1 - r0)
    if lone:
        one_token_input(x[last], xs[last], main, HALF_BIAS_SHIFT)
    r = r0
    while r < r1:
        block = r // BLOCK
        run_end = min(r1, (block + 1) * BLOCK)
        for t in range(several):
            scale_activation(x[t], scales[block], xs[t])
        while r + 2 <= run_end:
            col = r - r0
            t = 0
            while t < several:
                n = min(DOT_TOKENS, several - t)
                if n == 2:
                    store_pair(y, e4m3_dot_2x2(codes, r, xs, t, main, r1), t, 2, col)
                elif n == 3:
                    store_pair(y, e4m3_dot_2x3(codes, r, xs, t, main, r1), t, 3, col)
                else:
                    store_pair(y, e4m3_dot_2x4(codes, r, xs, t, main, r1), t, 4, col)
                t += n
            if lone:
                store_pair(y, e4m3_dot_2x1(codes, r, xs, last, main, r1, scales, block), last, 1, col)
            if main < num_cols:
                for t in range(several):
                    y[t, col] += e4m3_dot_tail(codes, r, xs, t, main)
                    y[t, col + 1] += e4m3_dot_tail(codes, r + 1, xs, t, main)
                if lone:
                    y[last, col] += e4m3_dot_tail_scaled(codes, r, x[last], main, scales[block])
                    y[last, col + 1] += e4m3_dot_tail_scaled(codes, r + 1, x[last], main, scales[block])
            r += 2
        if r < run_end:  # the last row of a matrix with an odd number of rows
            for t in range(several):  # (no one-row pass of several tokens: the scalar form)
                y[t, r - r0] = e4m3_dot_tail(codes, r, xs, t, 0)
            if lone:
                (a,) = e4m3_dot_1x1(codes, r, xs, last, main, r1, scales, block)
                y[last, r - r0] = a + e4m3_dot_tail_scaled(codes, r, x[last], main, scales[block])
            r += 1


@parallel_jit
def _fp8_gemv(codes, scales, x, y, num_workers):
    num_rows, num_cols = codes.shape
    min_rows = min_run_rows(num_cols)
    cursor = np.zeros(1, np.int64)
    for _ in prange(num_workers):
        xs = np.empty((x.shape[0], num_cols), np.float32)
        r0, r1 = claim_rows(cursor, 0, num_rows, num_workers, min_rows)
        while r0 < r1:
            gemv_rows(codes, scales, x, r0, r1, xs, y[:, r0:r1])
            r0, r1 = claim_rows(cursor, 0, num_rows, num_workers, min_rows)


def fp8_gemv(codes: np.ndarray, scales: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`W x` for uint8 e4m3 codes `[N, K]`, float32 scales on the ceil 128x128 grid and float32 `x [K]`
    (float32 `[N]`), or for a few tokens at once, `x [T, K]` (float32 `[T, N]`; the weight is still read once)."""
    codes, scales = check_fp8_weight("weight", codes, scales)
    ndim = 2 if isinstance(x, np.ndarray) and x.ndim == 2 else 1  # [T, K], else checked as [K]
    x = check_activations("x", x, codes.shape[1], ndim=ndim)
    x2 = x.reshape(-1, x.shape[-1])
    y = np.empty((x2.shape[0], codes.shape[0]), np.float32)
    if x2.shape[0]:
        _fp8_gemv(codes, scales, x2, y, numba.get_num_threads())
    return y[0] if x.ndim == 1 else y


def fp8_gemv_reference(codes: np.ndarray, scales: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The rule itself: dequantize (`model.fp8.dequantize`), then a float64 product (x [K] or [T, K])."""
    w = dequantize(codes, scales).astype(np.float64)
    return (np.asarray(x, np.float64) @ w.T).astype(np.float32)
