"""The CPU decode rules (e4m3 through half precision, and through byte tables) and the vector loops against their
plain-Python twins."""

from __future__ import annotations

import numpy as np
import pytest

from kimi_local.kernels.cpu_decode import (
    HALF_BIAS_SHIFT, TABLE_ORDER, TABLE_STEP, decode_e4m3, e4m3_half_bits, half_to_float, target_features,
)
from kimi_local.kernels.cpu_jit import jit
from kimi_local.kernels.cpu_simd import (
    DOT_STEP, LANES, ONE_TOKEN_TABLES, STEP_ORDER, TILE_ROWS, e4m3_dot_1x1, e4m3_dot_2x1, e4m3_dot_2x2,
    e4m3_dot_2x3, e4m3_dot_2x4, f32_tile, one_token_input, one_token_order,
)
from kimi_local.model.fp8 import E4M3_TABLE
from tests.kernels.cpu_cases import random_codes

NAN_CODES = (0x7F, 0xFF)


@jit
def _decode_all(codes):
    out = np.empty(codes.size, np.float32)
    for i in range(codes.size):
        out[i] = half_to_float(e4m3_half_bits(codes[i])) * np.float32(HALF_BIAS_SHIFT)
    return out


@jit
def _dots(codes, row, xs_one, scales, block, xs, xs_row, length):
    end = codes.shape[0]
    return (e4m3_dot_1x1(codes, row, xs_one, xs_row, length, end, scales, block),
            e4m3_dot_2x1(codes, row, xs_one, xs_row, length, end, scales, block),
            e4m3_dot_2x2(codes, row, xs, xs_row, length, end), e4m3_dot_2x3(codes, row, xs, xs_row, length, end),
            e4m3_dot_2x4(codes, row, xs, xs_row, length, end))


@jit
def _one_hot_dots(codes, xs, scales):
    """Row 0 of `codes` dotted with each row of `xs` (1x1 and both rows of 2x1, row 1 a copy of row 0)."""
    out = np.empty((xs.shape[0], 3), np.float32)
    for i in range(xs.shape[0]):
        (out[i, 0],) = e4m3_dot_1x1(codes, 0, xs, i, codes.shape[1], 2, scales, 0)
        out[i, 1], out[i, 2] = e4m3_dot_2x1(codes, 0, xs, i, codes.shape[1], 2, scales, 0)
    return out


@jit
def _one_token_input(x, xs, length, factor):
    one_token_input(x, xs, length, factor)


@jit
def _tile(panel, k0, tile, j0, klen, out):
    f32_tile(panel, k0, tile, j0, klen, out)


def test_half_route_is_bit_exact_for_every_code():
    codes = np.arange(256, dtype=np.uint8)
    finite = np.array([c not in NAN_CODES for c in range(256)])
    for decoded in (_decode_all(codes), decode_e4m3(codes)):
        assert np.array_equal(decoded[finite].view(np.uint32), E4M3_TABLE[finite].view(np.uint32))
        # The NaN codes are documented to read as +-480 (never written by the quantizer).
        assert decoded[0x7F] == 480.0 and decoded[0xFF] == -480.0


def test_subnormals_and_signed_zero_decode_exactly():
    assert _decode_all(np.array([0x01, 0x07, 0x81, 0x80, 0x00], np.uint8)).tolist() == [
        2.0**-9, 7 * 2.0**-9, -(2.0**-9), 0.0, 0.0]
    assert np.signbit(_decode_all(np.array([0x80], np.uint8)))[0]


@pytest.mark.parametrize("length", [0, DOT_STEP, 7 * DOT_STEP, 224 * DOT_STEP])
def test_e4m3_dots_match_the_decoded_products(length):
    rng = np.random.default_rng(length)
    codes = random_codes(rng, (5, length + 11))  # the 11 trailing columns must be ignored
    xs = rng.standard_normal((6, codes.shape[1])).astype(np.float32)
    decoded = decode_e4m3(codes[:, :length]).astype(np.float64) / HALF_BIAS_SHIFT
    expected = decoded @ xs[:, :length].astype(np.float64).T  # [rows, tokens]
    tol = 1e-5 * (1 + np.abs(decoded).sum(axis=1).max() * np.abs(xs).max())
    # The one-token dots take unscaled xs and apply the block scales of row block 1 (columns' blocks 0, 1, ...).
    scales = rng.uniform(0.5, 2.0, (3, -(-codes.shape[1] // 128))).astype(np.float32)
    results = _dots(codes, 2, one_token_order(xs, length), scales, 1, xs, 1, length)
    x_scaled = xs[:, :length].astype(np.float64) * np.repeat(scales[1].astype(np.float64), 128)[:length]
    expected_one = decoded @ x_scaled.T
    for got, (rows, tokens) in zip(results, [(1, 1), (2, 1), (2, 2), (2, 3), (2, 4)]):
        assert len(got) == rows * tokens
        want = (expected_one if tokens == 1 else expected)[2 : 2 + rows, 1 : 1 + tokens]
        assert np.allclose(np.reshape(got, (rows, tokens)), want, rtol=0, atol=2 * tol)
    # The one-token dots sum a row in one order, whichever pass it is in.
    assert results[0][0] == results[1][0]


def test_one_token_dots_decode_every_code_exactly():
    """Each code against a one-hot activation (placed where the one-token dots read it): the sum is exactly the
    code's value / 256, so the byte tables (where used), the sign merge and the value order are all exact."""
    codes = np.tile(np.arange(256, dtype=np.uint8), (2, 1))  # 4 DOT_STEPs on AVX-512, 8 on AVX2
    got = _one_hot_dots(codes, one_token_order(np.eye(256, dtype=np.float32), 256), np.ones((1, 2), np.float32))
    expected = decode_e4m3(codes[0]) / np.float32(HALF_BIAS_SHIFT)
    for column in got.T:  # (a sum of signed zeros is +0, so the comparison is by value)
        assert np.array_equal(column, expected)


@pytest.mark.parametrize("length", [0, DOT_STEP, 5 * DOT_STEP])
def test_one_token_input_orders_and_scales(length):
    x = np.random.default_rng(length).standard_normal(length + 7).astype(np.float32)
    xs = np.full_like(x, -1.0)
    _one_token_input(x, xs, length, np.float32(256.0))
    assert np.array_equal(xs[:length], one_token_order(x[None, :length], length)[0] * np.float32(256.0))
    assert (xs[length:] == -1.0).all()  # columns past `length` untouched


def test_one_token_order_permutes_within_each_step():
    assert sorted(TABLE_ORDER.tolist()) == list(range(TABLE_STEP))
    assert np.array_equal(STEP_ORDER, TABLE_ORDER if ONE_TOKEN_TABLES else np.arange(DOT_STEP))
    values = np.arange(3 * DOT_STEP + 5, dtype=np.float32)[None, :]
    ordered = one_token_order(values, 3 * DOT_STEP)
    for step in range(3):
        assert np.array_equal(ordered[0, step * DOT_STEP : (step + 1) * DOT_STEP],
                              values[0, step * DOT_STEP + STEP_ORDER])
    assert np.array_equal(ordered[0, 3 * DOT_STEP :], values[0, 3 * DOT_STEP :])  # past `length`: unchanged
    assert ONE_TOKEN_TABLES == (DOT_STEP == TABLE_STEP and "avx512vbmi" in target_features())


@pytest.mark.parametrize("klen,k0", [(1, 0), (5, 3), (128, 0), (200, 17)])
def test_f32_tile_accumulates_the_broadcast_products(klen, k0):
    rng = np.random.default_rng(klen)
    panel = rng.standard_normal((k0 + klen + 4, LANES)).astype(np.float32)
    tile = rng.standard_normal((2 * TILE_ROWS, klen + 3)).astype(np.float32)
    out = rng.standard_normal((2 * TILE_ROWS, LANES)).astype(np.float32)
    expected = out.astype(np.float64).copy()
    expected[TILE_ROWS:] += tile[TILE_ROWS:, :klen].astype(np.float64) @ panel[k0 : k0 + klen]
    _tile(panel, k0, tile, TILE_ROWS, klen, out)
    assert np.allclose(out, expected, rtol=1e-5, atol=1e-4)
