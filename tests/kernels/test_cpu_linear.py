"""The torch-facing block-fp8 linear on the CPU: both row-count paths against the reference rule, and the
resident layer module that keeps the codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kimi_local.kernels import cpu_linear
from kimi_local.kernels.cpu_gemm import dequantize_rows
from kimi_local.kernels.cpu_linear import DEQUANT_MIN_TOKENS, CpuFp8Linear, fp8_linear_cpu
from kimi_local.kernels.cpu_routing import GEMV_MAX_TOKENS
from kimi_local.model.fp8 import dequantize
from tests.kernels.cpu_cases import random_fp8, read_only


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


@pytest.mark.parametrize("rows", [1, 3, GEMV_MAX_TOKENS + 1, 40, DEQUANT_MIN_TOKENS])
def test_cpu_fp8_linear_keeps_the_codes_and_matches_the_rule(rows):
    rng = np.random.default_rng(rows)
    codes, scales = random_fp8(rng, (200, 260))
    source = read_only(codes)  # as the checkpoint hands it out: a read-only view of its mmap
    layer = CpuFp8Linear(source, scales)
    assert layer.weight_q.dtype == torch.uint8 and layer.weight_q.shape == (200, 260)  # 1 byte per weight
    assert not np.shares_memory(layer.weight_q.numpy(), source)  # its own copy, not the checkpoint's pages
    x = torch.from_numpy(rng.standard_normal((rows, 260)).astype(np.float32))
    expected = x.double() @ torch.from_numpy(dequantize(codes, scales)).double().T
    got = layer(x)
    assert got.dtype == torch.float32 and got.shape == (rows, 200)
    assert (got.double() - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_cpu_fp8_linear_rejects_bad_inputs():
    rng = np.random.default_rng(1)
    codes, scales = random_fp8(rng, (64, 128))
    with pytest.raises(ValueError, match="scale grid"):
        CpuFp8Linear(codes, scales[:, :0])
    with pytest.raises(TypeError, match="uint8"):
        CpuFp8Linear(codes.astype(np.int8), scales)
    with pytest.raises(ValueError, match="the layer takes 128"):
        CpuFp8Linear(codes, scales)(torch.zeros(2, 100))


def test_large_row_counts_go_through_float32_chunks(monkeypatch):
    rng = np.random.default_rng(7)
    codes, scales = random_fp8(rng, (300, 130))
    monkeypatch.setattr(cpu_linear, "DEQUANT_CHUNK_BYTES", 4 * 130 * 64)  # 64 rows a chunk: 5 chunks, one partial
    x = rng.standard_normal((DEQUANT_MIN_TOKENS + 3, 130)).astype(np.float32)
    expected = x.astype(np.float64) @ dequantize(codes, scales).astype(np.float64).T
    for got in (cpu_linear.dequantized_matmul(codes, scales, x), cpu_linear.fp8_matmul(codes, scales, x)):
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("r0,r1", [(0, 300), (128, 131), (5, 5), (299, 300)])
def test_dequantize_rows_matches_the_rule(r0, r1):
    rng = np.random.default_rng(r1)
    codes, scales = random_fp8(rng, (300, 200))
    out = np.full((r1 - r0 + 2, 200), np.nan, np.float32)
    got = dequantize_rows(codes, scales, r0, r1, out)
    assert np.array_equal(got, dequantize(codes, scales)[r0:r1]) and np.isnan(out[r1 - r0 :]).all()
    with pytest.raises(ValueError, match="out of range"):
        dequantize_rows(codes, scales, 0, 301, out)
    with pytest.raises(ValueError, match="out must be float32"):
        dequantize_rows(codes, scales, r0, r1, out[:, :100])
