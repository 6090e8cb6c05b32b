"""A block-fp8 linear layer on the CPU for torch callers, `y = x @ W^T`, the weight kept in checkpoint form.

Three paths, by the number of rows T (tokens):

* T <= GEMV_MAX_TOKENS (decode): the weight-streaming GEMV, each weight byte read once and decoded once per
  4 rows; a decode step is bound by the bytes it reads, and these are a quarter of float32's;
* up to DEQUANT_MIN_TOKENS: the decode-once GEMM (each weight decoded once into a tile, reused for all rows);
* from DEQUANT_MIN_TOKENS (long prefill chunks): W dequantized DEQUANT_CHUNK_BYTES of float32 rows at a time
  into a scratch buffer, each chunk multiplied by torch's float32 matmul. At that size the matmul's
  arithmetic dominates, and torch's BLAS micro-kernels beat our GEMM; decoding costs a few % of it. Measured
  here, 2 threads, on [7168, 8192] and [18432, 7168] weights, the chunked path against our GEMM: 1.01-1.11x at 128 rows, 1.03-1.23x at 256, 1.28-1.35x at 512, 1.42-1.50x at 1024.

For the layers that stay resident (attention projections, the dense MLP, the shared expert) this keeps one
byte per weight in RAM where dequantized float32 takes four.
"""

from __future__ import annotations

import numpy as np
import torch

from kimi_local.kernels.cpu_checks import check_fp8_arrays
from kimi_local.kernels.cpu_gemm import dequantize_rows, fp8_gemm
from kimi_local.kernels.cpu_gemv import fp8_gemv
from kimi_local.kernels.cpu_routing import GEMV_MAX_TOKENS


DEQUANT_MIN_TOKENS = 256  # rows from which dequantizing in chunks for torch's matmul wins (measured, above)
DEQUANT_CHUNK_BYTES = 16 << 20  # float32 scratch per chunk of weight rows


def dequantized_matmul(codes: np.ndarray, scales: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 x [T, K] @ W^T through float32 chunks of W's rows and torch's matmul (the large-T path)."""
    num_rows, num_cols = codes.shape
    chunk = max(1, min(num_rows, DEQUANT_CHUNK_BYTES // (4 * num_cols)))
    scratch = np.empty((chunk, num_cols), np.float32)
    y = torch.empty((x.shape[0], num_rows), dtype=torch.float32)
    xt = torch.from_numpy(x)
    for r0 in range(0, num_rows, chunk):
        r1 = min(num_rows, r0 + chunk)
        w = torch.from_numpy(dequantize_rows(codes, scales, r0, r1, scratch))
        torch.matmul(xt, w.T, out=y[:, r0:r1])
    return y.numpy()


def fp8_matmul(codes: np.ndarray, scales: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 x [T, K] (or [K]) times the block-fp8 weight [N, K] transposed: float32 [T, N] (or [N])."""
    rows = x.shape[0] if x.ndim == 2 else 1
    if rows >= DEQUANT_MIN_TOKENS:
        return dequantized_matmul(codes, scales, x)
    if rows > GEMV_MAX_TOKENS:
        return fp8_gemm(codes, scales, x)
    return fp8_gemv(codes, scales, x)


def fp8_linear_cpu(x: torch.Tensor, codes: np.ndarray, scales: np.ndarray) -> torch.Tensor:
    """x [..., K] (any float dtype) -> [..., N] in x's dtype, computed in float32 on the CPU."""
    rows = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float32).contiguous().numpy()
    y = fp8_matmul(codes, scales, rows)
    return torch.from_numpy(y).reshape(*x.shape[:-1], y.shape[-1]).to(device=x.device, dtype=x.dtype)


class CpuFp8Linear(torch.nn.Module):
    """A resident linear layer (no bias) on the CPU that holds the checkpoint's block-fp8 codes [N, K] and
    float32 ceil-grid scales, copied into memory of its own (not the checkpoint's mmap pages, which the OS may
    drop under pressure), and computes with `fp8_linear_cpu`. Torch in, torch out, in x's dtype."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray):
        super().__init__()
        codes, scales = check_fp8_arrays("weight", codes, scales)
        self.register_buffer("weight_q", torch.from_numpy(np.array(codes, copy=True)))
        self.register_buffer("scale", torch.from_numpy(np.array(scales, copy=True)))
        self.out_features, self.in_features = codes.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} features, the layer takes {self.in_features}")
        return fp8_linear_cpu(x, self.weight_q.numpy(), self.scale.numpy())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, block-fp8 on the CPU"
