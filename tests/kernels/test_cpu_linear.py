"""The torch-facing block-fp8 linear on the CPU: both row-count paths against the reference rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kimi_local.kernels.cpu_linear import fp8_linear_cpu
from kimi_local.kernels.cpu_moe import GEMV_MAX_TOKENS
from kimi_local.model.fp8 import dequantize
from tests.kernels.cpu_cases import random_fp8


@pytest.mark.parametrize("shape,dtype", [((1, 300), torch.float32), ((2, 3, 300), torch.float32),
                                         ((GEMV_MAX_TOKENS + 5, 300), torch.float32),
                                         ((4, 300), torch.bfloat16)])
def test_fp8_linear_cpu_matches_dequantized_linear(shape, dtype):
    rng = np.random.default_rng(len(shape) * 10 + shape[0])
    codes, scales = random_fp8(rng, (130, 300))
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)
    got = fp8_linear_cpu(x, codes, scales)
    expected = torch.nn.functional.linear(x.double(), torch.from_numpy(dequantize(codes, scales)).double())
    assert got.shape == (*shape[:-1], 130) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (got.double() - expected).abs().max() <= tol * expected.abs().max()
