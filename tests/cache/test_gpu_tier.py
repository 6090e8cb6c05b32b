"""The GPU expert tier on a CPU stand-in device: promotions must not distort the RAM tier's accounting, and
prefetch must not spend reads or RAM slots on experts the GPU computes."""

import numpy as np
import pytest
import torch

from kimi_local.cache.backend import CachedExperts
from kimi_local.cache.gpu_tier import expert_payload_bytes
from kimi_local.cache.reader import expert_slot_bytes
from kimi_local.cache.store import ExpertStore
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.experts import TorchReferenceExperts

LAYER = 1  # tiny: layers 1-2 have 16 experts, top-4, hidden 192


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    with Checkpoint.open(tiny_checkpoint) as c:
        yield c


def make_store(ckpt, ram_slots, gpu_slots):
    gpu = gpu_slots * expert_payload_bytes(ckpt.config)
    return ExpertStore(ckpt, ram_slots * expert_slot_bytes(ckpt), num_io_threads=2, gpu_budget_bytes=gpu,
                       gpu_device="cpu" if gpu_slots else None)


def step(experts, layer, expert_ids, num_tokens=1, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((num_tokens, 192)).astype(np.float32))
    ids = torch.tensor([expert_ids] * num_tokens)
    w = torch.from_numpy(rng.random(ids.shape).astype(np.float32))
    return x, ids, w, experts(layer, x, ids, w)


@pytest.mark.parametrize("gpu_slots", [0, 4])
def test_prefetch_accounting_is_the_same_with_a_gpu_tier(ckpt, gpu_slots):
    """The reviewer's repro: prefetch 4 experts, wait, compute them. A promotion in that step must not count
    as a lookup, consume the prediction, or drop the prefetch holds."""
    with make_store(ckpt, 8, gpu_slots) as store:
        experts = CachedExperts(store)
        store.prefetch(LAYER, [0, 1, 2, 3])
        store.wait_idle()
        x, ids, w, out = step(experts, LAYER, [0, 1, 2, 3])
        torch.testing.assert_close(out, TorchReferenceExperts(ckpt)(LAYER, x, ids, w), rtol=1e-5, atol=1e-5)
        snap = store.snapshot()
        assert (snap["lookups"], snap["hits"], snap["misses"]) == (4, 4, 0)
        assert (snap["prefetch_hits"], snap["prefetch_unused"]) == (4, 0)
        assert snap["prefetch_recall"] == 1.0
        assert store.max_lease == 8  # nothing stays leased or held
        if gpu_slots:
            assert snap["gpu_promotions"] == 1  # the tier still learns from the step


def test_promotion_keeps_the_next_layers_prefetch(ckpt):
    """A layer step's promotion must not drop the prefetch holds of the layer that runs next."""
    with make_store(ckpt, 8, 4) as store:
        experts = CachedExperts(store)
        store.prefetch(2, [8, 9, 10, 11])
        step(experts, LAYER, [0, 1, 2, 3])
        assert store.gpu_tier.promotions == 1
        store.wait_idle()
        step(experts, 2, [8, 9, 10, 11])
        snap = store.snapshot()
        assert (snap["prefetch_hits"], snap["prefetch_unused"]) == (4, 0)


def test_prefetch_skips_experts_on_the_gpu(ckpt):
    with make_store(ckpt, 6, 4) as store:
        experts = CachedExperts(store)
        for i in range(6):  # one promotion per step: all four end up on the GPU
            step(experts, LAYER, [0, 1, 2, 3], seed=i)
        tier = store.gpu_tier
        assert tier.contains(LAYER, np.arange(4)).all()
        for e in range(8, 14):  # hotter experts push them out of RAM (the GPU copies stay)
            with store.lease(2, [e], token_counts=[100.0]):
                pass
        assert store.snapshot()["ram_resident_experts"] == 6 and store.max_lease == 6
        before = store.snapshot()
        store.prefetch(LAYER, [0, 1, 2, 3, 5])
        store.wait_idle()
        after = store.snapshot()
        assert after["prefetch_reads"] - before["prefetch_reads"] == 1  # expert 5 only
        assert store.max_lease == 6 - 1  # one hold, for expert 5
        x, ids, w, out = step(experts, LAYER, [0, 1, 2, 5], seed=9)
        torch.testing.assert_close(out, TorchReferenceExperts(ckpt)(LAYER, x, ids, w), rtol=1e-5, atol=1e-5)
        snap = store.snapshot()
        assert snap["prefetch_hits"] - after["prefetch_hits"] == 1 and snap["lookups"] - after["lookups"] == 1
