import numpy as np
import pytest
import torch

from kimi_local.model.fp8 import (
    E4M3_TABLE, dequantize, dequantize_torch, e4m3_to_float32, float32_to_e4m3, quantize, scale_grid_shape,
)


def test_table_matches_torch_for_all_codes():
    codes = torch.arange(256, dtype=torch.uint8)
    expected = codes.view(torch.float8_e4m3fn).float().numpy()
    both_nan = np.isnan(expected) & np.isnan(E4M3_TABLE)
    assert np.array_equal(expected[~both_nan], E4M3_TABLE[~both_nan])
    assert both_nan.sum() == 2  # 0x7f and 0xff


@pytest.mark.parametrize("shape", [(576, 7168 // 14), (130, 129), (1, 1), (128, 128), (255, 257), (3, 300)])
def test_dequantize_partial_blocks_follow_the_rule_exactly(shape):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=shape, dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x10  # no NaN codes
    grid = scale_grid_shape(*shape)
    scales = rng.uniform(0.01, 2.0, size=grid).astype(np.float32)
    got = dequantize(codes, scales)
    expected = np.empty(shape, np.float32)
    for i in range(shape[0]):
        for j in range(shape[1]):
            expected[i, j] = np.float32(E4M3_TABLE[codes[i, j]]) * scales[i // 128, j // 128]
    assert np.array_equal(got, expected)
    assert torch.equal(dequantize_torch(torch.from_numpy(codes), torch.from_numpy(scales)), torch.from_numpy(expected))


def test_kimi_kv_a_proj_grid_is_ceil():
    assert scale_grid_shape(576, 7168) == (5, 56)


def test_wrong_scale_grid_is_rejected():
    with pytest.raises(ValueError, match="scale grid"):
        dequantize(np.zeros((200, 100), np.uint8), np.ones((1, 1), np.float32))


def test_quantize_round_trip_error_is_within_e4m3_precision():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((300, 200)).astype(np.float32)
    codes, scales = quantize(w)
    assert scales.shape == (3, 2)
    back = dequantize(codes, scales)
    # 3 mantissa bits: relative error <= 2^-4 for normal values; absolute floor from the block scale
    err = np.abs(back - w)
    assert np.all(err <= np.abs(w) * 2**-4 + np.repeat(np.repeat(scales, 128, 0), 128, 1)[:300, :200] * 2**-9)
    assert not np.any(np.isnan(back))


def test_encode_saturates_and_rounds_to_nearest_even():
    codes = float32_to_e4m3(np.array([1000.0, -1000.0, 1.0625, 1.1875], np.float32))
    values = e4m3_to_float32(codes)
    assert values.tolist() == [448.0, -448.0, 1.0, 1.25]
