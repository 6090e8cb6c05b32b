"""Input checks shared by the block-fp8 GPU kernels and the `Fp8Linear` module.

They live apart from the Triton kernels so that code which only needs the checks (the torch fallback on a
machine without a GPU) does not import the kernels: `@triton.jit` chooses between compiling and interpreting
when a kernel module is imported.
"""

from __future__ import annotations

import torch

from kimi_local.model.fp8 import scale_grid_shape

ACTIVATION_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
WEIGHT_DTYPES = (torch.uint8, torch.float8_e4m3fn)


def check_fp8_weight(name: str, weight_q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Validate block-fp8 codes `[..., N, K]` and their ceil-grid scales; return the codes viewed as uint8."""
    if weight_q.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{name} codes must be uint8 or float8_e4m3fn, got {weight_q.dtype}")
    if scales.dtype != torch.float32:
        raise TypeError(f"{name} scales must be float32, got {scales.dtype}")
    if weight_q.dim() < 2 or weight_q.shape[-1] == 0 or weight_q.shape[-2] == 0:
        raise ValueError(f"{name} codes must be a non-empty [..., N, K] matrix, got shape {tuple(weight_q.shape)}")
    expected = (*weight_q.shape[:-2], *scale_grid_shape(weight_q.shape[-2], weight_q.shape[-1]))
    if tuple(scales.shape) != expected:
        raise ValueError(
            f"{name} scale grid {tuple(scales.shape)} does not fit codes {tuple(weight_q.shape)}: expected {expected}"
        )
    if not weight_q.is_contiguous() or not scales.is_contiguous():
        raise ValueError(f"{name} codes and scales must be contiguous")
    if scales.device != weight_q.device:
        raise ValueError(f"{name} scales are on {scales.device} but its codes on {weight_q.device}")
    return weight_q.view(torch.uint8)


def check_activation(name: str, x: torch.Tensor, width: int) -> None:
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"{name} must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != width:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: its last dim must be {width}")
