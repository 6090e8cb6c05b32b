"""The prefill GEMM (decode-once tiles + broadcast micro-kernel) against the reference rule."""

from __future__ import annotations

import numpy as np
import pytest

from kimi_local.kernels.cpu_gemm import fp8_gemm, fp8_gemm_reference, pack_activations
from kimi_local.kernels.cpu_simd import LANES
from tests.kernels.cpu_cases import random_fp8, read_only
from tests.kernels.test_cpu_gemv import assert_close

CASES = [  # tokens, rows, cols: 1 token, odd counts, one and several panels, partial blocks and chunks
    (1, 1, 1), (1, 130, 200), (2, 3, 31), (5, 257, 129), (LANES, 48, 128), (LANES + 1, 100, 300),
    (3 * LANES - 1, 64, 1000), (40, 129, 2048),
]


@pytest.mark.parametrize("num_tokens,num_rows,num_cols", CASES)
def test_gemm_matches_reference(num_tokens, num_rows, num_cols):
    rng = np.random.default_rng(num_tokens * 7 + num_rows)
    codes, scales = random_fp8(rng, (num_rows, num_cols))
    x = rng.standard_normal((num_tokens, num_cols)).astype(np.float32)
    assert_close(fp8_gemm(read_only(codes), read_only(scales), x), fp8_gemm_reference(codes, scales, x), num_cols)


def test_gemm_with_no_tokens_is_empty():
    codes, scales = random_fp8(np.random.default_rng(0), (10, 20))
    assert fp8_gemm(codes, scales, np.zeros((0, 20), np.float32)).shape == (0, 10)


def test_pack_activations_puts_tokens_in_lanes():
    x = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    panels = pack_activations(x)
    assert panels.shape == (1, 5, LANES)
    assert np.array_equal(panels[0, :, :3], x.T) and not panels[0, :, 3:].any()


def test_gemm_rejects_a_1d_activation():
    codes, scales = random_fp8(np.random.default_rng(0), (10, 20))
    with pytest.raises(ValueError, match=r"\[T, K\]"):
        fp8_gemm(codes, scales, np.zeros(20, np.float32))
