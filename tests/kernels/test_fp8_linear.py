"""`Fp8Linear`: backend choice, both backends against the reference rule, buffers and bad input."""

import pytest
import torch

from kimi_local.kernels.fp8_linear import Fp8Linear
from kimi_local.kernels.triton_fp8_linear import fp8_linear_reference
from kimi_local.model.fp8 import dequantize_torch
from tests.kernels.triton_testing import DEVICE, HAS_CUDA, assert_matches, random_fp8_weight

torch.set_num_threads(1)


def make_layer_inputs(seed=0, num_out=200, num_in=300):
    g = torch.Generator().manual_seed(seed)
    codes, scales = random_fp8_weight(num_out, num_in, g)
    return codes, scales, torch.randn((5, num_in), generator=g)


def test_backend_follows_the_device():
    codes, scales, _ = make_layer_inputs()
    assert Fp8Linear(codes, scales).backend == "torch"
    if HAS_CUDA:
        assert Fp8Linear(codes.cuda(), scales.cuda()).backend == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backend_is_the_reference_rule(dtype):
    codes, scales, x = make_layer_inputs(1)
    layer = Fp8Linear(codes.view(torch.float8_e4m3fn), scales, backend="torch")
    x = x.to(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (5, 200)
    expected = (x.float() @ dequantize_torch(codes, scales).T).to(dtype)
    assert torch.equal(y, expected)
    assert layer(x.reshape(1, 5, 300)).shape == (1, 5, 200)


@pytest.mark.parametrize("num_rows", [1, 3, 17])
def test_triton_backend_matches_torch_backend(num_rows):
    codes, scales, _ = make_layer_inputs(2, 130, 257)
    x = torch.randn((num_rows, 257), generator=torch.Generator().manual_seed(num_rows)).to(torch.bfloat16)
    fast = Fp8Linear(codes.to(DEVICE), scales.to(DEVICE), backend="triton")
    slow = Fp8Linear(codes, scales, backend="torch")
    y = fast(x.to(DEVICE))
    assert_matches(y.cpu(), slow(x))
    assert_matches(y, fp8_linear_reference(x.to(DEVICE), fast.weight_q, fast.scale))


def test_weights_are_buffers_in_native_form():
    codes, scales, _ = make_layer_inputs(3)
    layer = Fp8Linear(codes.view(torch.float8_e4m3fn), scales)
    state = layer.state_dict()
    assert set(state) == {"weight_q", "scale"} and state["weight_q"].dtype == torch.uint8
    assert layer.weight_q.data_ptr() == codes.data_ptr()  # a view, not a copy
    assert list(layer.parameters()) == []
    assert "in_features=300, out_features=200, backend=torch" in repr(layer)


def test_bad_input_is_named():
    codes, scales, x = make_layer_inputs(4)
    with pytest.raises(ValueError, match="scale grid"):
        Fp8Linear(codes, scales[:, :1])
    with pytest.raises(ValueError, match="2-D"):
        Fp8Linear(codes[None], scales[None])
    with pytest.raises(ValueError, match="backend must be one of"):
        Fp8Linear(codes, scales, backend="numba")
    with pytest.raises(ValueError, match="last dim must be 300"):
        Fp8Linear(codes, scales)(x[:, :299])
