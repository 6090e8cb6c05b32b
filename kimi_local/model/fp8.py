"""Block-fp8, the checkpoint's weight format.

Every linear weight inside attention, MLPs and experts is stored as float8 e4m3fn bytes `Wq [N, K]` (out, in)
with a float32 grid `S [ceil(N/128), ceil(K/128)]` beside it, named `weight_scale_inv` but used as a
multiplier:

    W[i, j] = e4m3(Wq[i, j]) * S[i // 128, j // 128]

The last block row/column may be partial (Kimi-K2's kv_a_proj_with_mqa has 576 = 4.5 * 128 rows): it keeps
its own scale. e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits, no infinities, 0x7f/0xff are NaN,
max finite 448. This module is the reference for that rule (numpy, exact); fast kernels live in
`kimi_local.kernels`.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 128
E4M3_MAX = 448.0


def scale_grid_shape(num_rows: int, num_cols: int, block: int = BLOCK) -> tuple[int, int]:
    return (-(-num_rows // block), -(-num_cols // block))


def _e4m3_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = (codes & 0x7).astype(np.float64)
    normal = (1.0 + man / 8.0) * np.exp2(exp.astype(np.float64) - 7.0)
    subnormal = (man / 8.0) * 2.0**-6
    value = sign * np.where(exp == 0, subnormal, normal)
    value[(codes & 0x7F) == 0x7F] = np.nan
    return value.astype(np.float32)


E4M3_TABLE = _e4m3_table()  # read-only decode table: code -> float32


def e4m3_to_float32(codes: np.ndarray) -> np.ndarray:
    return E4M3_TABLE[np.asarray(codes, dtype=np.uint8)]


def float32_to_e4m3(values: np.ndarray) -> np.ndarray:
    """Round to nearest even e4m3fn (torch's conversion), saturating at +-448."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    t = t.clamp(-E4M3_MAX, E4M3_MAX)
    return t.to(torch.float8_e4m3fn).view(torch.uint8).numpy()


def expand_scales(scales: np.ndarray, num_rows: int, num_cols: int, block: int = BLOCK) -> np.ndarray:
    """Per-element scale `[N, K]` from the ceil grid (partial edge blocks reuse their block's scale)."""
    s = np.repeat(np.repeat(scales, block, axis=0), block, axis=1)
    return s[:num_rows, :num_cols]


def dequantize(weight_q: np.ndarray, scales: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """The reference rule, float32 out."""
    num_rows, num_cols = weight_q.shape
    expected = scale_grid_shape(num_rows, num_cols, block)
    if tuple(scales.shape) != expected:
        raise ValueError(f"scale grid {tuple(scales.shape)} does not fit weight {weight_q.shape}: expected {expected}")
    return e4m3_to_float32(weight_q) * expand_scales(np.asarray(scales, np.float32), num_rows, num_cols, block)


def quantize(weight: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per-block absmax quantization: s = max|block| / 448 (tiny blocks clamped), Wq = e4m3(W / s)."""
    weight = np.asarray(weight, dtype=np.float32)
    num_rows, num_cols = weight.shape
    grid = scale_grid_shape(num_rows, num_cols, block)
    padded = np.zeros((grid[0] * block, grid[1] * block), np.float32)
    padded[:num_rows, :num_cols] = np.abs(weight)
    absmax = padded.reshape(grid[0], block, grid[1], block).max(axis=(1, 3))
    scales = (np.maximum(absmax, 1e-12) / E4M3_MAX).astype(np.float32)
    codes = float32_to_e4m3(weight / expand_scales(scales, num_rows, num_cols, block))
    return codes, scales


def dequantize_torch(weight_q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Same rule on torch tensors (uint8 or float8_e4m3fn codes), any device."""
    if weight_q.dtype == torch.uint8:
        weight_q = weight_q.view(torch.float8_e4m3fn)
    num_rows, num_cols = weight_q.shape
    s = scales.float().repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:num_rows, :num_cols]
    return (weight_q.float() * s).to(dtype)
