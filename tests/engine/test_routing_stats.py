"""RoutingStats: decayed per-layer expert counts, entropy, prefetch recall, and the hook on a real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kimi_local.engine.routing_stats import RoutingStats, entropy_bits


def entropy_by_hand(row) -> float:
    total = sum(row)
    return -sum((c / total) * math.log2(c / total) for c in row if c > 0) if total else 0.0


def test_entropy_matches_the_definition():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, size=(6, 11)).astype(float)
    counts[2] = 0.0  # an empty row has entropy 0
    got = entropy_bits(counts)
    assert got == pytest.approx([entropy_by_hand(row) for row in counts], abs=1e-12)
    assert entropy_bits(np.ones(16)) == pytest.approx(4.0)  # uniform over 16: log2(16)
    assert entropy_bits(np.eye(8)[3]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="non-negative"):
        entropy_bits(np.array([1.0, -1.0]))


def test_counts_decay_by_half_life_in_tokens():
    stats = RoutingStats(num_layers=2, num_experts=4, half_life_tokens=8)
    stats(1, torch.tensor([[0]]))  # one token to expert 0
    for _ in range(8):  # then 8 decode steps to expert 2: expert 0's count halves
        stats(1, torch.tensor([[2]]))
    snap = stats.snapshot()
    expert2 = sum(0.5 ** (j / 8) for j in range(8))
    expected = np.array([0.5, 0.0, expert2, 0.0])
    assert snap.load[1] == pytest.approx(expected / expected.sum())
    assert snap.entropy_bits[1] == pytest.approx(entropy_by_hand(expected))
    assert snap.load[0].sum() == 0.0 and snap.entropy_bits[0] == 0.0


def test_a_chunk_decays_old_counts_like_the_same_number_of_single_steps():
    one, many = RoutingStats(1, 4, half_life_tokens=5), RoutingStats(1, 4, half_life_tokens=5)
    for s in (one, many):
        s(0, torch.tensor([[1, 3]]))
    one(0, torch.tensor([[0, 2]] * 6))  # a prefill chunk of 6 tokens
    for _ in range(6):
        many(0, torch.tensor([[0, 2]]))
    old_one = one.snapshot().load[0][[1, 3]] * one._counts[0].sum()
    old_many = many.snapshot().load[0][[1, 3]] * many._counts[0].sum()
    assert old_one == pytest.approx(old_many)
    assert old_one == pytest.approx([0.5 ** (6 / 5)] * 2)


def test_moe_layers_only_and_routed_tokens():
    stats = RoutingStats(num_layers=4, num_experts=8, moe_layer_ids=[1, 2, 3])
    stats(1, torch.tensor([[0, 1], [2, 3], [4, 5]]))
    snap = stats.snapshot()
    assert snap.layer_ids == (1, 2, 3) and snap.load.shape == (3, 8)
    assert snap.routed_tokens == 3
    assert snap.load[0] == pytest.approx(np.r_[np.full(6, 1 / 6), 0, 0])
    assert snap.max_entropy_bits == 3.0
    assert snap.normalized_entropy[0] == pytest.approx(math.log2(6) / 3)
    assert snap.mean_normalized_entropy == pytest.approx(math.log2(6) / 3)  # only active layers count
    stats.reset()
    assert stats.snapshot().routed_tokens == 0 and stats.snapshot().mean_normalized_entropy is None


def test_prefetch_recall_counts_predicted_choices():
    stats = RoutingStats(2, 8)
    stats(1, torch.tensor([[0, 1], [2, 3]]), torch.tensor([[0, 5], [3, 2]]))  # 1 of 2, then 2 of 2
    assert stats.snapshot().prefetch_recall == pytest.approx(3 / 4)
    assert RoutingStats(2, 8).snapshot().prefetch_recall is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="num_layers"):
        RoutingStats(0, 4)
    with pytest.raises(ValueError, match="half_life"):
        RoutingStats(1, 4, half_life_tokens=0)
    with pytest.raises(ValueError, match="moe_layer_ids"):
        RoutingStats(2, 4, moe_layer_ids=[5])
    stats = RoutingStats(2, 4)
    with pytest.raises(ValueError, match="layer 7"):
        stats(7, torch.tensor([[0]]))
    with pytest.raises(ValueError, match="0..3"):
        stats(0, torch.tensor([[4]]))
    with pytest.raises(ValueError, match=r"\[tokens, k\]"):
        stats(0, torch.tensor([0, 1]))


def test_hook_on_the_tiny_model(tiny_checkpoint):
    from kimi_local.engine.engine import Engine
    from kimi_local.engine.sampling import SamplingParams
    from kimi_local.model.checkpoint import Checkpoint
    from kimi_local.model.deepseek import KimiModel
    from kimi_local.model.experts import TorchReferenceExperts

    ckpt = Checkpoint.open(tiny_checkpoint)
    model = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt))
    stats = RoutingStats.for_model(model, half_life_tokens=1e9)  # no decay: plain counts
    assert stats in model.routing_hooks
    c = ckpt.config
    prompt = [5, 9, 2, 7, 1]
    out = list(Engine(model, max_context=64).generate(prompt, SamplingParams(temperature=0, max_new_tokens=4)))
    snap = stats.snapshot()
    assert snap.layer_ids == tuple(c.moe_layer_ids)
    # Every generated token except the last was fed back through the model.
    routed = len(prompt) + len(out) - 1
    assert snap.routed_tokens == routed
    counts = snap.load * routed * c.num_experts_per_tok
    assert counts.sum(axis=1) == pytest.approx([routed * c.num_experts_per_tok] * len(snap.layer_ids))
    assert np.all(snap.entropy_bits <= math.log2(c.n_routed_experts) + 1e-9)
    assert np.all(snap.entropy_bits >= math.log2(c.num_experts_per_tok) - 1e-9)  # k distinct experts per token
    if model.prefetch_enabled:
        assert snap.prefetch_recall is not None and 0.0 <= snap.prefetch_recall <= 1.0
    stats.detach(model)
    assert stats not in model.routing_hooks


def test_counts_at_reads_the_raw_decayed_counts_across_layers():
    """What the GPU tier ranks experts by: unnormalised, so a busy layer's expert outranks a quiet one's."""
    stats = RoutingStats(num_layers=3, num_experts=4, half_life_tokens=2)
    stats(1, np.array([[0, 1]] * 4))
    stats(2, np.array([[2, 3]]))
    stats(2, np.array([[2, 0]]))
    assert stats.counts_at(1, 0) == pytest.approx(4.0)
    assert stats.counts_at(2, np.array([2, 3, 0])) == pytest.approx([1 + 0.5**0.5, 0.5**0.5, 1.0])
    assert stats.counts_at(np.array([1, 2]), np.array([1, 1])) == pytest.approx([4.0, 0.0])
