"""Absorbed MLA decode attention against the torch formula: partial head blocks, partial and empty splits,
per-sequence lengths, a strided shared cache buffer. On CPU it runs in the Triton interpreter."""

import math

import pytest
import torch

from kimi_local.kernels.triton_mla import mla_decode, mla_decode_reference
from tests.kernels.triton_testing import DEVICE, HAS_CUDA, assert_matches

torch.set_num_threads(1)
SCALE = 192**-0.5 * (0.1 * math.log(32) + 1) ** 2  # Kimi-K2's softmax scale (KIMI_FACTS §1)


def make_inputs(batch, heads, capacity, dtype=torch.float32, latent=512, rope=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn((batch, heads, latent), generator=g) * 0.2
    q_pe = torch.randn((batch, heads, rope), generator=g) * 0.2
    cache = torch.randn((batch, capacity, latent + rope), generator=g)  # one [B, T, 576] buffer, like the engine's
    cache = cache.to(dtype).to(DEVICE)
    return q.to(dtype).to(DEVICE), q_pe.to(dtype).to(DEVICE), cache[..., :latent], cache[..., latent:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,heads,capacity,num_splits", [(1, 5, 37, None), (2, 16, 70, 3), (3, 20, 64, 1)])
def test_matches_reference(batch, heads, capacity, num_splits, dtype):
    q, q_pe, kv, pe = make_inputs(batch, heads, capacity, dtype, seed=capacity)
    lengths = torch.tensor([capacity - 7 * b for b in range(batch)], dtype=torch.int32, device=DEVICE)
    out = mla_decode(q, q_pe, kv, pe, SCALE, lengths, num_splits=num_splits)
    assert out.shape == (batch, heads, 512) and out.dtype == dtype
    assert_matches(out, mla_decode_reference(q, q_pe, kv, pe, SCALE, lengths))


def test_rows_past_the_length_are_ignored_and_splits_agree():
    q, q_pe, kv, pe = make_inputs(2, 4, 100, rope=16, latent=64, seed=1)
    lengths = torch.tensor([1, 33], device=DEVICE)
    base = mla_decode(q, q_pe, kv, pe, SCALE, lengths, num_splits=1)
    assert torch.allclose(base[0], kv[0, 0].expand(4, 64))  # one row: its softmax weight is 1
    kv2, pe2 = kv.clone(), pe.clone()
    kv2[:, 33:] = 1e4  # garbage beyond every length
    pe2[:, 33:] = -1e4
    for splits in (1, 2, 4):  # with 4 splits of 1 tile each, sequence 0 leaves three splits empty
        assert_matches(mla_decode(q, q_pe, kv2, pe2, SCALE, lengths, num_splits=splits), base)
    assert_matches(mla_decode(q, q_pe, kv[:, :33], pe[:, :33], SCALE), mla_decode_reference(
        q, q_pe, kv[:, :33], pe[:, :33], SCALE))


def test_bad_inputs_are_named():
    q, q_pe, kv, pe = make_inputs(2, 4, 40, latent=64, rope=16)
    with pytest.raises(ValueError, match="kv_cache must be"):
        mla_decode(q, q_pe, kv[:1], pe, SCALE)
    with pytest.raises(ValueError, match="pe_cache must be"):
        mla_decode(q, q_pe, kv, pe[:, :39], SCALE)
    with pytest.raises(ValueError, match="rope width"):
        mla_decode(q, q_pe[..., :12], kv, pe[..., :12], SCALE)
    with pytest.raises(TypeError, match="share one of"):
        mla_decode(q, q_pe.double(), kv, pe, SCALE)
    with pytest.raises(ValueError, match="contiguous last dim"):
        mla_decode(q, q_pe, kv, pe.mT.contiguous().mT, SCALE)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 40\]"):
        mla_decode(q, q_pe, kv, pe, SCALE, torch.tensor([0, 5], device=DEVICE))
    with pytest.raises(ValueError, match="lengths must be"):
        mla_decode(q, q_pe, kv, pe, SCALE, torch.tensor([5], device=DEVICE))
    with pytest.raises(ValueError, match="num_splits"):
        mla_decode(q, q_pe, kv, pe, SCALE, num_splits=3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("batch,capacity", [(1, 4096), (4, 1000)])
def test_kimi_shapes_on_gpu(batch, capacity):
    """64 heads, latent 512, rope 64, bf16 cache."""
    q, q_pe, kv, pe = make_inputs(batch, 64, capacity, torch.bfloat16, seed=batch)
    lengths = torch.randint(1, capacity + 1, (batch,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    assert_matches(mla_decode(q, q_pe, kv, pe, SCALE, lengths), mla_decode_reference(q, q_pe, kv, pe, SCALE, lengths))
