import threading

import numpy as np
import pytest
import torch

from kimi_local.cache.backend import CachedExperts
from kimi_local.cache.reader import expert_slot_bytes
from kimi_local.cache.store import ExpertStore
from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.experts import TorchReferenceExperts

PROMPTS = [[5, 17, 300, 2, 999, 45, 77], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    with Checkpoint.open(tiny_checkpoint) as c:
        yield c


def routing(rng, num_tokens, hidden=192, num_experts=16, k=4):
    x = torch.from_numpy(rng.standard_normal((num_tokens, hidden)).astype(np.float32))
    ids = torch.from_numpy(np.stack([rng.choice(num_experts, k, replace=False) for _ in range(num_tokens)]))
    w = torch.from_numpy(rng.random((num_tokens, k)).astype(np.float32))
    return x, ids, w


@pytest.mark.parametrize("num_slots", [16, 3])  # 3 slots < the step's experts: computed in groups
def test_matches_the_plain_checkpoint_source(ckpt, num_slots):
    rng = np.random.default_rng(num_slots)
    reference = TorchReferenceExperts(ckpt)
    with ExpertStore(ckpt, num_slots * expert_slot_bytes(ckpt), num_io_threads=2) as store:
        experts = CachedExperts(store)
        for layer in (1, 2, 1):
            x, ids, w = routing(rng, 9)
            torch.testing.assert_close(experts(layer, x, ids, w), reference(layer, x, ids, w), rtol=1e-5, atol=1e-5)
        assert store.snapshot()["lookups"] > 0
        assert store.max_lease == num_slots  # nothing stays leased between steps
        usage = store.profile.usage
        assert usage[1].sum() == pytest.approx(36 * (1 + 0.5 ** (9 / 4096)))  # two steps, the first decayed
        assert usage[0].sum() == 0


def test_prefetch_is_forwarded(ckpt):
    with ExpertStore(ckpt, 8 * expert_slot_bytes(ckpt), num_io_threads=2) as store:
        CachedExperts(store).prefetch(2, torch.tensor([[3, 4]]))
        store.wait_idle()
        assert store.snapshot()["prefetch_reads"] == 2


def greedy_tokens(model):
    params = SamplingParams(temperature=0, max_new_tokens=8)
    return [list(Engine(model, 64, 1, prefill_chunk=4).generate(p, params)) for p in PROMPTS]


def test_model_with_a_tiny_budget_matches_the_plain_model(ckpt):
    """The oracle check through the store: 3 slots for 2 MoE layers x 16 experts (top-4) forces misses,
    evictions, grouped prefill steps and prefetches; the tokens must not change."""
    plain = greedy_tokens(KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt)))
    with ExpertStore(ckpt, 3 * expert_slot_bytes(ckpt), num_io_threads=2) as store:
        cached = greedy_tokens(KimiModel.from_checkpoint(ckpt, CachedExperts(store)))
        snap = store.snapshot()
    assert cached == plain
    assert snap["misses"] > 20 and snap["evictions"] > 20 and snap["prefetch_reads"] > 0


def test_numba_kernel_through_the_store(ckpt):
    numba_experts = pytest.importorskip("kimi_local.kernels.cpu_experts")
    rng = np.random.default_rng(0)
    reference = TorchReferenceExperts(ckpt)
    with ExpertStore(ckpt, 5 * expert_slot_bytes(ckpt), num_io_threads=2) as store:
        experts = CachedExperts(store, lambda source: numba_experts.NumbaExperts(source, num_threads=1))
        x, ids, w = routing(rng, 6)
        torch.testing.assert_close(experts(2, x, ids, w), reference(2, x, ids, w), rtol=2e-4, atol=2e-4)


def test_gpu_tier_on_the_cpu_device_matches(ckpt):
    """The tier's logic (promotion by heat, split of the step between tiers) on a CPU stand-in device."""
    rng = np.random.default_rng(3)
    reference = TorchReferenceExperts(ckpt)
    from kimi_local.cache.gpu_tier import expert_payload_bytes

    with ExpertStore(ckpt, 6 * expert_slot_bytes(ckpt), num_io_threads=2,
                     gpu_budget_bytes=4 * expert_payload_bytes(ckpt.config), gpu_device="cpu") as store:
        experts = CachedExperts(store)
        for step in range(8):
            x, ids, w = routing(rng, 5)
            torch.testing.assert_close(experts(1 + step % 2, x, ids, w), reference(1 + step % 2, x, ids, w),
                                       rtol=1e-5, atol=1e-5)
        snap = store.snapshot()
        assert snap["gpu_resident_experts"] == 4 and snap["gpu_promotions"] >= 4
        tier = store.gpu_tier
        for slot, key in enumerate(tier.key_of_slot.tolist()):  # each slot holds exactly the expert it claims
            layer, e = divmod(key, 16)
            assert torch.equal(tier.stacked.gate_q[slot], torch.from_numpy(ckpt.expert(layer, e).gate_q))


def test_experts_in_ram_are_computed_while_the_rest_is_read(ckpt, monkeypatch):
    """A step whose experts 1, 2 are cached and 3, 4 are not: the kernel runs on 1, 2 while 3 and 4 are still
    being read (the read is held until the first kernel call), then on 3, 4; the sum is the full output."""
    from kimi_local.cache import reader

    first_call, opened = threading.Event(), threading.Event()
    real = reader.read_expert_steps

    def held(plan, files, slot):
        if plan.expert_id in (3, 4):
            assert opened.wait(5)
        return (yield from real(plan, files, slot))

    calls = []

    class Recording(TorchReferenceExperts):
        def __call__(self, layer_idx, x, ids, w):
            calls.append(sorted(set(ids[w > 0].tolist())))
            first_call.set()
            return super().__call__(layer_idx, x, ids, w)

    x, _, _ = routing(np.random.default_rng(0), 1)
    ids = torch.tensor([[1, 3, 2, 4]])
    w = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    with ExpertStore(ckpt, 8 * expert_slot_bytes(ckpt), num_io_threads=2) as store:
        with store.lease(1, [1, 2]):
            pass
        monkeypatch.setattr("kimi_local.cache.store.read_expert_steps", held)
        experts = CachedExperts(store, Recording)
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("out", experts(1, x, ids, w)))
        t.start()
        assert first_call.wait(5)
        opened.set()
        t.join(5)
        assert store.snapshot()["stall_miss_seconds"] > 0
    assert calls == [[1, 2], [3, 4]]
    torch.testing.assert_close(result["out"], TorchReferenceExperts(ckpt)(1, x, ids, w), rtol=1e-5, atol=1e-5)
