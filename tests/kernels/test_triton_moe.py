"""The fused routed-expert FFN for the GPU tier against the one-expert-at-a-time torch reference, and the
pair alignment it launches over. On CPU the kernels run in the Triton interpreter (tests/kernels/conftest.py)."""

import numpy as np
import pytest
import torch

from kimi_local.kernels.triton_moe import StackedExperts, align_pairs, fused_moe, fused_moe_reference, hidden_dtype
from kimi_local.model.experts import ExpertWeights
from tests.kernels.triton_testing import DEVICE, HAS_CUDA, assert_matches, random_codes, random_scales

torch.set_num_threads(1)


def make_tier(num_slots, hidden, inter, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    tier = StackedExperts.empty(num_slots, hidden, inter, device=device)
    for codes in (tier.gate_q, tier.up_q, tier.down_q):
        codes.copy_(random_codes(codes.shape, g))
    for scales, (rows, cols) in ((tier.gate_s, (inter, hidden)), (tier.up_s, (inter, hidden)),
                                 (tier.down_s, (hidden, inter))):
        scales.copy_(random_scales(rows, cols, g, lead=(num_slots,)))
    return tier


def make_routing(num_tokens, top_k, num_experts, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:top_k] for _ in range(num_tokens)])
    weights = torch.rand((num_tokens, top_k), generator=g) + 0.1
    return ids.to(DEVICE), weights.to(DEVICE)


SLOT_OF_EXPERT = torch.tensor([-1, 2, 0, -1, 1, -1, -1])  # 7 experts, 3 of them on the GPU


def check_alignment(blocks, topk_ids, slot_of_expert):
    """Every GPU pair appears exactly once, in a block of its own slot; padding is the sentinel."""
    slots = slot_of_expert[topk_ids.cpu().reshape(-1)].numpy()
    num_pairs = slots.size
    num_blocks = int(blocks.num_blocks.item())
    counts = np.bincount(slots[slots >= 0], minlength=int(slot_of_expert.max()) + 1)
    assert num_blocks == int(sum(-(-c // blocks.block_m) for c in counts)) <= blocks.max_blocks
    pairs = blocks.sorted_pairs.cpu().numpy().reshape(blocks.max_blocks, blocks.block_m)
    for b in range(num_blocks):
        real = pairs[b][pairs[b] < num_pairs]
        assert np.all(slots[real] == int(blocks.block_slots[b]))
    assert np.all(pairs[num_blocks:] == num_pairs)
    placed = np.sort(pairs[:num_blocks][pairs[:num_blocks] < num_pairs])
    assert np.array_equal(placed, np.flatnonzero(slots >= 0))


@pytest.mark.parametrize("num_tokens,top_k,block_m", [(1, 2, 16), (3, 3, 4), (17, 4, 16), (40, 2, 8)])
def test_align_pairs_groups_by_slot(num_tokens, top_k, block_m):
    ids, _ = make_routing(num_tokens, top_k, 7, seed=num_tokens)
    blocks = align_pairs(ids, SLOT_OF_EXPERT.to(DEVICE), 3, block_m)
    check_alignment(blocks, ids, SLOT_OF_EXPERT)


def test_align_pairs_with_nothing_on_the_gpu():
    ids = torch.tensor([[0, 3], [5, 6]], device=DEVICE)
    blocks = align_pairs(ids, SLOT_OF_EXPERT.to(DEVICE), 3, 16)
    assert int(blocks.num_blocks.item()) == 0
    assert torch.all(blocks.sorted_pairs == 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens,top_k", [(1, 4), (3, 3), (17, 2)])
def test_fused_moe_matches_reference(num_tokens, top_k, dtype):
    tier = make_tier(3, 200, 136)  # neither dim a multiple of 128
    ids, weights = make_routing(num_tokens, top_k, 7, seed=num_tokens)
    x = torch.randn((num_tokens, 200), generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    slot_of_expert = SLOT_OF_EXPERT.to(DEVICE)
    y = fused_moe(x, ids, weights, tier, slot_of_expert)
    assert_matches(y, fused_moe_reference(x, ids, weights, tier, slot_of_expert, hidden_dtype(dtype)))


def test_one_hot_expert_spans_several_blocks():
    tier = make_tier(2, 144, 80, seed=3)
    num_tokens = 40
    ids = torch.stack([torch.full((num_tokens,), 4), torch.arange(num_tokens) % 3], 1).to(DEVICE)  # expert 4 everywhere
    weights = torch.rand((num_tokens, 2), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    slot_of_expert = torch.tensor([1, -1, -1, -1, 0], device=DEVICE)
    x = torch.randn((num_tokens, 144), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    y = fused_moe(x, ids, weights, tier, slot_of_expert, block_m=16)  # 40 + 14 pairs -> 3 + 1 blocks
    assert_matches(y, fused_moe_reference(x, ids, weights, tier, slot_of_expert))


def test_only_gpu_experts_contribute():
    tier = make_tier(3, 200, 136, seed=5)
    ids, weights = make_routing(5, 3, 7, seed=6)
    x = torch.randn((5, 200), generator=torch.Generator().manual_seed(7)).to(DEVICE)
    all_off = torch.full((7,), -1, device=DEVICE)
    assert torch.count_nonzero(fused_moe(x, ids, weights, tier, all_off)) == 0
    # splitting the experts between two tiers and adding the halves gives the whole
    everything = torch.tensor([0, 1, 2, 0, 1, 2, 0], device=DEVICE)
    first = torch.where(torch.arange(7, device=DEVICE) < 3, everything, -1)
    second = torch.where(torch.arange(7, device=DEVICE) >= 3, everything, -1)
    whole = fused_moe(x, ids, weights, tier, everything)
    assert_matches(fused_moe(x, ids, weights, tier, first) + fused_moe(x, ids, weights, tier, second), whole)


def test_load_slot_copies_an_expert_source_layout():
    g = torch.Generator().manual_seed(8)
    tier = StackedExperts.empty(2, 200, 136, device=DEVICE)
    expert = ExpertWeights(
        gate_q=random_codes((136, 200), g).numpy(), gate_s=random_scales(136, 200, g).numpy(),
        up_q=random_codes((136, 200), g).numpy(), up_s=random_scales(136, 200, g).numpy(),
        down_q=random_codes((200, 136), g).numpy(), down_s=random_scales(200, 136, g).numpy(),
    )
    tier.load_slot(1, expert)
    assert np.array_equal(tier.down_q[1].cpu().numpy(), expert.down_q)
    assert np.array_equal(tier.up_s[1].cpu().numpy(), expert.up_s)
    assert torch.count_nonzero(tier.gate_q[0]) == 0
    with pytest.raises(IndexError, match="slot 2"):
        tier.load_slot(2, expert)
    with pytest.raises(ValueError, match="expert gate_q has shape"):
        StackedExperts.empty(1, 100, 136).load_slot(0, expert)


def test_bad_inputs_are_named():
    tier = make_tier(3, 200, 136)
    ids, weights = make_routing(2, 2, 7)
    x = torch.randn((2, 200), device=DEVICE)
    slot_of_expert = SLOT_OF_EXPERT.to(DEVICE)
    with pytest.raises(ValueError, match=r"topk_ids must lie in \[0, 7\)"):
        fused_moe(x, ids + 7, weights, tier, slot_of_expert)
    with pytest.raises(ValueError, match="slot_of_expert values"):
        fused_moe(x, ids, weights, tier, slot_of_expert + 1)
    with pytest.raises(ValueError, match="topk_weights"):
        fused_moe(x, ids, weights[:, :1], tier, slot_of_expert)
    with pytest.raises(TypeError, match="topk_ids must be int32 or int64"):
        fused_moe(x, ids.float(), weights, tier, slot_of_expert)
    with pytest.raises(ValueError, match="last dim must be 200"):
        fused_moe(x[:, :100], ids, weights, tier, slot_of_expert)
    with pytest.raises(ValueError, match="topk_ids must be"):
        fused_moe(x[:1], ids, weights, tier, slot_of_expert)
    bad = StackedExperts(tier.gate_q, tier.gate_s, tier.up_q, tier.up_s, tier.gate_q, tier.gate_s)
    with pytest.raises(ValueError, match="down codes"):
        fused_moe(x, ids, weights, bad, slot_of_expert)
    bad = StackedExperts(tier.gate_q, tier.gate_s[:, :1], tier.up_q, tier.up_s, tier.down_q, tier.down_s)
    with pytest.raises(ValueError, match="gate scale grid"):
        fused_moe(x, ids, weights, bad, slot_of_expert)
    with pytest.raises(ValueError, match="block_m"):
        fused_moe(x, ids, weights, tier, slot_of_expert, block_m=24)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("num_tokens", [1, 4, 64])
def test_kimi_shapes_on_gpu(num_tokens):
    """384 experts, 32 of them in the tier, H = 7168, I = 2048, top-8, bf16 activations."""
    tier = make_tier(32, 7168, 2048, seed=9)
    ids, weights = make_routing(num_tokens, 8, 384, seed=num_tokens)
    slot_of_expert = torch.full((384,), -1, dtype=torch.int32)
    slot_of_expert[torch.randperm(384, generator=torch.Generator().manual_seed(10))[:32]] = torch.arange(
        32, dtype=torch.int32)
    ids[:, 0] = torch.nonzero(slot_of_expert >= 0)[0, 0].to(DEVICE)  # at least one GPU pair per token
    slot_of_expert = slot_of_expert.to(DEVICE)
    x = torch.randn((num_tokens, 7168), generator=torch.Generator().manual_seed(11)).to(torch.bfloat16).to(DEVICE)
    y = fused_moe(x, ids, weights, tier, slot_of_expert)
    assert_matches(y, fused_moe_reference(x, ids, weights, tier, slot_of_expert))
