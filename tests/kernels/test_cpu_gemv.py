"""The decode GEMV against the dequantize-then-multiply rule on many shapes, and its input checks."""

from __future__ import annotations

import numpy as np
import pytest

from kimi_local.kernels.cpu_gemv import fp8_gemv, fp8_gemv_reference
from tests.kernels.cpu_cases import random_fp8, read_only

SHAPES = [
    (1, 1), (1, 31), (3, 32), (2, 33), (7, 127), (130, 129),  # shorter than one vector step, partial blocks
    (128, 128), (129, 257), (257, 200), (576, 448), (64, 2048), (300, 7168),  # kv_a-like 576 rows, full rows
]


def assert_close(got: np.ndarray, expected: np.ndarray, terms: int) -> None:
    scale = np.abs(expected).max() + 1e-6
    assert got.dtype == np.float32 and got.shape == expected.shape
    diff = np.abs(got - expected).max()
    print(f"max |diff| {diff:.3g} (relative {diff / scale:.3g})")
    assert diff <= 1e-6 * np.sqrt(terms) * scale * 8


@pytest.mark.parametrize("num_rows,num_cols", SHAPES)
def test_gemv_matches_reference(num_rows, num_cols):
    rng = np.random.default_rng(num_rows * 1000 + num_cols)
    codes, scales = random_fp8(rng, (num_rows, num_cols))
    x = rng.standard_normal(num_cols).astype(np.float32)
    assert_close(fp8_gemv(codes, scales, x), fp8_gemv_reference(codes, scales, x), num_cols)


def test_gemv_reads_read_only_views_without_copying():
    rng = np.random.default_rng(1)
    codes, scales = random_fp8(rng, (200, 300))
    x = rng.standard_normal(300).astype(np.float32)
    assert np.array_equal(fp8_gemv(read_only(codes), read_only(scales), x), fp8_gemv(codes, scales, x))


def test_gemv_is_exact_on_exactly_representable_products():
    # Codes 0x38 (= 1.0) and 0xb8 (= -1.0), power-of-two scales and small integer x: every sum is exact.
    rng = np.random.default_rng(2)
    codes = np.where(rng.random((130, 260)) < 0.5, 0x38, 0xB8).astype(np.uint8)
    scales = np.exp2(rng.integers(-3, 3, size=(2, 3))).astype(np.float32)
    x = rng.integers(-4, 5, size=260).astype(np.float32)
    assert np.array_equal(fp8_gemv(codes, scales, x), fp8_gemv_reference(codes, scales, x))


@pytest.mark.parametrize("mutate,message", [
    (lambda c, s, x: (c.astype(np.int8), s, x), "uint8"),
    (lambda c, s, x: (c, s.astype(np.float64), x), "float32"),
    (lambda c, s, x: (c, s[:, :1], x), "scale grid"),
    (lambda c, s, x: (c[:, ::2], s[:, :1], x[::2]), "C-contiguous"),
    (lambda c, s, x: (c, s, x[:-1]), "K = 200"),
    (lambda c, s, x: (c, s, x.astype(np.float64)), "float32"),
])
def test_gemv_rejects_bad_inputs_by_name(mutate, message):
    rng = np.random.default_rng(3)
    codes, scales = random_fp8(rng, (130, 200))
    x = rng.standard_normal(200).astype(np.float32)
    with pytest.raises((TypeError, ValueError), match=message):
        fp8_gemv(*mutate(codes, scales, x))


@pytest.mark.parametrize("num_tokens", [2, 5, 13])
@pytest.mark.parametrize("num_rows", [200, 201])  # 201: the odd last row, for each token
def test_gemv_takes_a_few_tokens_at_once(num_tokens, num_rows):
    """Tokens go through passes of up to DOT_TOKENS (a last one alone takes the one-token dots)."""
    rng = np.random.default_rng(num_tokens)
    codes, scales = random_fp8(rng, (num_rows, 333))
    x = rng.standard_normal((num_tokens, 333)).astype(np.float32)
    got = fp8_gemv(codes, scales, x)
    assert_close(got, fp8_gemv_reference(codes, scales, x), 333)
    assert_close(got[-1], fp8_gemv(codes, scales, x[-1]), 333)
    # The several-token passes all sum in one order: a token's result does not depend on its pass partners.
    assert np.array_equal(got[1, :200], fp8_gemv(codes, scales, np.stack([x[1], x[0], x[1]]))[0, :200])
