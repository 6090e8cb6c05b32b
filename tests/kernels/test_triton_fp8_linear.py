"""The block-fp8 linear kernels against the torch reference: partial blocks, odd row counts, both launch
shapes, every activation dtype. On CPU they run in the Triton interpreter (tests/kernels/conftest.py)."""

import subprocess
import sys

import pytest
import torch

from kimi_local.kernels.triton_fp8_linear import DECODE_MAX_M, fp8_linear, fp8_linear_reference, pick_split_k
from kimi_local.model.fp8 import E4M3_TABLE
from tests.kernels.triton_testing import DEVICE, HAS_CUDA, assert_matches, random_fp8_weight

torch.set_num_threads(1)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_case(num_rows, num_out, num_in, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes, scales = random_fp8_weight(num_out, num_in, g)
    x = torch.randn((num_rows, num_in), generator=g).to(dtype)
    return x.to(DEVICE), codes.to(DEVICE), scales.to(DEVICE)


def test_every_finite_code_decodes_exactly():
    codes = torch.arange(256, dtype=torch.uint8)
    finite = torch.from_numpy(~__import__("numpy").isnan(E4M3_TABLE))
    codes = codes[finite].reshape(-1, 1).contiguous()  # [254, 1]: one code per output row, K = 1
    scales = torch.full((2, 1), 0.5).float()
    scales[1] = 2.0  # rows 128.. use a second scale
    x = torch.ones((1, 1))
    expected = torch.from_numpy(E4M3_TABLE)[finite] * torch.where(torch.arange(254) < 128, 0.5, 2.0)
    for variant in ("gemv", "gemm"):
        y = fp8_linear(x.to(DEVICE), codes.to(DEVICE), scales.to(DEVICE), variant=variant)
        assert torch.equal(y.cpu()[0], expected), variant


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_rows,num_out,num_in", [(1, 200, 300), (3, 129, 257), (4, 576, 384), (1, 64, 100)])
def test_gemv_matches_reference(num_rows, num_out, num_in, dtype):
    x, codes, scales = make_case(num_rows, num_out, num_in, dtype)
    y = fp8_linear(x, codes, scales, variant="gemv")
    assert_matches(y, fp8_linear_reference(x, codes, scales))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_rows,num_out,num_in", [(1, 200, 300), (3, 129, 257), (17, 130, 192), (70, 257, 129)])
def test_gemm_matches_reference(num_rows, num_out, num_in, dtype):
    x, codes, scales = make_case(num_rows, num_out, num_in, dtype, seed=1)
    y = fp8_linear(x, codes, scales, variant="gemm")
    assert_matches(y, fp8_linear_reference(x, codes, scales))


@pytest.mark.parametrize("split_k,block_k", [(1, 128), (2, 128), (3, 128), (4, 32), (10, 32), (3, 64)])
def test_gemv_split_k_and_tile_sizes(split_k, block_k):
    x, codes, scales = make_case(2, 150, 300, torch.float32, seed=2)
    y = fp8_linear(x, codes, scales, variant="gemv", split_k=split_k, block_k=block_k, block_n=16)
    assert_matches(y, fp8_linear_reference(x, codes, scales))


@pytest.mark.parametrize("block_n,block_k", [(16, 32), (32, 128), (64, 64)])
def test_gemm_tile_sizes(block_n, block_k):
    x, codes, scales = make_case(20, 150, 300, torch.float32, seed=3)
    y = fp8_linear(x, codes, scales, variant="gemm", block_n=block_n, block_k=block_k)
    assert_matches(y, fp8_linear_reference(x, codes, scales))


def test_default_variant_and_split_choice():
    x, codes, scales = make_case(DECODE_MAX_M + 1, 130, 260, torch.float32, seed=4)
    for rows in (1, DECODE_MAX_M, DECODE_MAX_M + 1):
        assert_matches(fp8_linear(x[:rows], codes, scales), fp8_linear_reference(x[:rows], codes, scales))
    # every split gets the same number of K tiles and no split is empty
    for n_tiles, k_tiles in [(1, 56), (112, 64), (9, 56), (300, 3), (2, 7)]:
        split = pick_split_k(n_tiles, k_tiles, torch.device("cpu"))
        per = -(-k_tiles // split)
        assert 1 <= split <= k_tiles and (split - 1) * per < k_tiles


def test_float8_codes_batched_and_strided_inputs():
    x, codes, scales = make_case(6, 96, 160, torch.float32, seed=5)
    expected = fp8_linear_reference(x, codes, scales)
    assert_matches(fp8_linear(x, codes.view(torch.float8_e4m3fn), scales), expected)
    y = fp8_linear(x.reshape(2, 3, 160), codes, scales)  # leading dims are kept
    assert y.shape == (2, 3, 96)
    assert_matches(y.reshape(6, 96), expected)
    wide = torch.zeros((6, 320), device=DEVICE)
    wide[:, ::2] = x  # a view whose last dim is strided
    assert_matches(fp8_linear(wide[:, ::2], codes, scales), expected)
    assert fp8_linear(x[:0], codes, scales).shape == (0, 96)


def test_bad_inputs_are_named():
    x, codes, scales = make_case(1, 130, 200, torch.float32)
    with pytest.raises(ValueError, match="scale grid"):
        fp8_linear(x, codes, scales[:1])
    with pytest.raises(TypeError, match="codes must be uint8"):
        fp8_linear(x, codes.view(torch.int8), scales)
    with pytest.raises(TypeError, match="scales must be float32"):
        fp8_linear(x, codes, scales.double())
    with pytest.raises(ValueError, match="last dim must be 200"):
        fp8_linear(x[:, :100], codes, scales)
    with pytest.raises(TypeError, match="x must be"):
        fp8_linear(x.to(torch.int32), codes, scales)
    with pytest.raises(ValueError, match="contiguous"):
        fp8_linear(x[:, :128], codes[:, :128], scales[:, :1])
    with pytest.raises(ValueError, match="block_k"):
        fp8_linear(x, codes, scales, block_k=48)
    with pytest.raises(ValueError, match="block_k"):
        fp8_linear(x, codes, scales, block_k=256)
    with pytest.raises(ValueError, match="variant"):
        fp8_linear(x, codes, scales, variant="fast")
    with pytest.raises(ValueError, match="split_k"):
        fp8_linear(x, codes, scales, variant="gemv", split_k=3)
    with pytest.raises(ValueError, match="at most 16 rows"):
        fp8_linear(x.expand(17, 200), codes, scales, variant="gemv")
    with pytest.raises(ValueError, match="x is on meta"):
        fp8_linear(torch.empty((1, 200), device="meta"), codes, scales)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only failure mode")
def test_compiled_kernels_on_cpu_tensors_fail_clearly():
    code = (
        "import torch\n"
        "from kimi_local.kernels.triton_fp8_linear import fp8_linear\n"
        "try:\n"
        "    fp8_linear(torch.ones(1, 128), torch.zeros(8, 128, dtype=torch.uint8), torch.ones(1, 1))\n"
        "except RuntimeError as e:\n"
        "    print('RAISED', e)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "RAISED x is on cpu: the Triton kernels need CUDA tensors" in result.stdout, result.stderr


# Real Kimi-K2 shapes on a real GPU (benchmarks/gpu_check.py runs these with -m gpu).
KIMI_LINEARS = {
    "q_a_proj": (1536, 7168), "q_b_proj": (12288, 1536), "kv_a_proj_with_mqa": (576, 7168),
    "kv_b_proj": (16384, 512), "o_proj": (7168, 8192), "dense_gate": (18432, 7168),
    "dense_down": (7168, 18432), "expert_gate": (2048, 7168), "expert_down": (7168, 2048),
}


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(KIMI_LINEARS))
@pytest.mark.parametrize("num_rows", [1, 3, 16, 512])
def test_kimi_shapes_on_gpu(name, num_rows):
    num_out, num_in = KIMI_LINEARS[name]
    x, codes, scales = make_case(num_rows, num_out, num_in, torch.bfloat16, seed=num_rows)
    assert_matches(fp8_linear(x, codes, scales), fp8_linear_reference(x, codes, scales))
