"""The CPU decode rule (e4m3 through half precision) and the two vector loops against their plain-Python twins."""

from __future__ import annotations

import numpy as np
import pytest

from kimi_local.kernels.cpu_jit import jit
from kimi_local.kernels.cpu_simd import (
    DOT_STEP, HALF_BIAS_SHIFT, LANES, TILE_ROWS, decode_e4m3, e4m3_dot_1x1, e4m3_dot_2x1, e4m3_dot_2x2,
    e4m3_dot_2x3, e4m3_dot_2x4, e4m3_half_bits, f32_tile, half_to_float,
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
def _dots(codes, row, xs, xs_row, length):
    end = codes.shape[0]
    return (e4m3_dot_1x1(codes, row, xs, xs_row, length, end), e4m3_dot_2x1(codes, row, xs, xs_row, length, end),
            e4m3_dot_2x2(codes, row, xs, xs_row, length, end), e4m3_dot_2x3(codes, row, xs, xs_row, length, end),
            e4m3_dot_2x4(codes, row, xs, xs_row, length, end))


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
    results = _dots(codes, 2, xs, 1, length)
    for got, (rows, tokens) in zip(results, [(1, 1), (2, 1), (2, 2), (2, 3), (2, 4)]):
        assert len(got) == rows * tokens
        assert np.allclose(np.reshape(got, (rows, tokens)), expected[2 : 2 + rows, 1 : 1 + tokens], rtol=0, atol=tol)
    # The same row and token give the same sum, in the same order, whatever else the pass computes; except
    # that on AVX2 the several-token passes take half-width steps (a different summation order).
    same_order = min(DOT_STEP, 2 * LANES) == DOT_STEP
    assert len({r[0] for r in results}) == 1 if same_order else len({r[0] for r in results[:2]}) == 1


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
