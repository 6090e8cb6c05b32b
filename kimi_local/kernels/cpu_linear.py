"""A block-fp8 linear layer on the CPU for torch callers, `y = x @ W^T`, the weight kept in checkpoint form.

The same two kernels as the routed experts, picked by the number of rows: up to GEMV_MAX_TOKENS rows the
weight-streaming GEMV (each weight byte read once, decoded once per 4 rows), more rows the decode-once GEMM.
For the layers that stay resident (attention projections, the dense MLP, the shared expert) this keeps one
byte per weight in RAM where dequantized float32 takes four.
"""

from __future__ import annotations

import numpy as np
import torch

from kimi_local.kernels.cpu_gemm import fp8_gemm
from kimi_local.kernels.cpu_gemv import fp8_gemv
from kimi_local.kernels.cpu_moe import GEMV_MAX_TOKENS


def fp8_matmul(codes: np.ndarray, scales: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 x [T, K] times the block-fp8 weight [N, K] transposed: float32 [T, N]."""
    if x.ndim == 2 and x.shape[0] > GEMV_MAX_TOKENS:
        return fp8_gemm(codes, scales, x)
    return fp8_gemv(codes, scales, x)


def fp8_linear_cpu(x: torch.Tensor, codes: np.ndarray, scales: np.ndarray) -> torch.Tensor:
    """x [..., K] (any float dtype) -> [..., N] in x's dtype, computed in float32 on the CPU."""
    rows = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float32).contiguous().numpy()
    y = fp8_matmul(codes, scales, rows)
    return torch.from_numpy(y).reshape(*x.shape[:-1], y.shape[-1]).to(device=x.device, dtype=x.dtype)
