import os
import shutil
import threading
import time

import numpy as np
import pytest

from kimi_local.cache import reader as reader_module
from kimi_local.cache.reader import ALIGN, ExpertReadError, expert_slot_bytes, plan_expert
from kimi_local.cache.slots import SlotArena
from kimi_local.cache.store import ExpertStore, StoreError
from kimi_local.model.checkpoint import Checkpoint, CheckpointError

LAYER = 1  # tiny: layer 0 is dense, layers 1-2 have 16 experts


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    """A private copy, so tests may damage its shards."""
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, path)
    with Checkpoint.open(path) as c:
        yield c


def make_store(ckpt, num_slots, **kw):
    kw.setdefault("num_io_threads", 2)
    return ExpertStore(ckpt, num_slots * expert_slot_bytes(ckpt), **kw)


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.__dict__.values(), b.__dict__.values()))


def test_acquire_reads_exact_weights(ckpt):
    with make_store(ckpt, 4) as store:
        got = store.acquire(LAYER, [3, 7])
        assert same(got[0], ckpt.expert(LAYER, 3)) and same(got[1], ckpt.expert(LAYER, 7))
        assert not got[0].gate_q.flags.writeable
        store.release(LAYER, [3, 7])
        snap = store.snapshot()
        assert (snap["misses"], snap["hits"], snap["ram_resident_experts"]) == (2, 0, 2)
        with store.lease(LAYER, [3]) as (w,):
            assert same(w, ckpt.expert(LAYER, 3))
        assert store.snapshot()["hits"] == 1


def test_plan_reads_aligned_ranges_within_the_slot(ckpt):
    plan = plan_expert(ckpt, 2, 5)
    slot = expert_slot_bytes(ckpt)
    for op in plan.reads:
        assert op.file_offset % ALIGN == 0 and op.length % ALIGN == 0 and op.slot_offset % ALIGN == 0
        assert op.slot_offset + op.length <= slot
    assert len(plan.reads) < 6  # each weight and its scale grid are adjacent in the shard: one read


def test_chunked_read_yields_between_chunks_and_reads_the_same(ckpt):
    plan = plan_expert(ckpt, 2, 5)
    files = reader_module.ShardFiles(True)
    whole = SlotArena(2, expert_slot_bytes(ckpt))
    try:
        nbytes = reader_module.read_expert(plan, files, whole.slot_view(0))
        assert plan.nbytes <= nbytes <= plan.read_bytes
        steps = reader_module.read_expert_steps(plan, files, whole.slot_view(1), chunk_bytes=ALIGN)
        num_steps = 0
        while True:
            try:
                next(steps)
                num_steps += 1
            except StopIteration as stop:
                assert stop.value == nbytes
                break
        assert num_steps >= sum(op.length // ALIGN for op in plan.reads)
        assert np.array_equal(whole.slot_view(0), whole.slot_view(1))
        with pytest.raises(ValueError, match="multiple of 4096"):
            next(reader_module.read_expert_steps(plan, files, whole.slot_view(1), chunk_bytes=1000))
    finally:
        files.close()


def test_eviction_respects_the_budget_exactly(ckpt):
    slot = expert_slot_bytes(ckpt)
    with ExpertStore(ckpt, 5 * slot + slot - 1, num_io_threads=2) as store:  # 5.99 slots -> 5
        assert store.arena.num_slots == 5 and store.arena.nbytes == 5 * slot
        for e in range(16):
            with store.lease(LAYER + e % 2, [e]):
                assert store.snapshot()["ram_resident_experts"] <= 5
        snap = store.snapshot()
        assert snap["ram_resident_experts"] == 5 and snap["evictions"] == 11
        assert store.policy.num_keys and len(store.policy) == 5


def test_budget_too_small(ckpt):
    with pytest.raises(StoreError, match="holds no expert"):
        ExpertStore(ckpt, 1000)
    with make_store(ckpt, 2) as store:
        with pytest.raises(StoreError, match="all 2 slots"):
            store.acquire(LAYER, [0, 1, 2])
        store.wait_idle()  # the two reads it started finish and stay cached
        assert store.snapshot()["ram_resident_experts"] == 2
        assert store.max_lease == 2  # the failed acquire released what it had leased
    with pytest.raises(StoreError, match="layer 0 has no routed experts"):
        make_store(ckpt, 2).acquire(0, [1])
    with pytest.raises(StoreError, match="expert 16 out of range"):
        make_store(ckpt, 2).acquire(1, [16])


def test_pinned_experts_stay(ckpt):
    with make_store(ckpt, 3, pinned=[(2, 9)]) as store:
        reads = store.snapshot()["misses"]
        for e in range(16):
            with store.lease(LAYER, [e]):
                pass
        with store.lease(2, [9]):
            pass
        snap = store.snapshot()
        assert snap["misses"] == reads + 16  # 2:9 was never read again
        assert store.policy.is_pinned(2 * 16 + 9)
    with pytest.raises(StoreError, match="pinned experts need"):
        make_store(ckpt, 2, pinned=[(1, 0), (1, 1)])


def test_in_use_slots_are_never_reused(ckpt):
    with make_store(ckpt, 3) as store:
        held = store.acquire(LAYER, [0, 1])
        before = held[0].gate_q.copy()
        for e in range(2, 16):
            with store.lease(LAYER, [e]):
                pass
        assert np.array_equal(held[0].gate_q, before)
        store.release(LAYER, [0, 1])
        with pytest.raises(StoreError, match="not leased"):
            store.release(LAYER, [0])


def truncate_expert(ckpt, layer, expert):
    info = ckpt.info(f"model.layers.{layer}.mlp.experts.{expert}.down_proj.weight")
    with open(info.shard, "r+b") as f:
        f.truncate(info.offset + 10)
    return info


def test_truncated_shard_gives_a_clear_error_and_the_cache_stays_consistent(ckpt):
    with make_store(ckpt, 3) as store:
        with store.lease(LAYER, [0]):
            pass
        info = truncate_expert(ckpt, LAYER, 15)  # the header was parsed before: the read itself comes up short
        with pytest.raises(ExpertReadError, match=rf"{info.shard.name}: tensor '.*experts\.15\.down_proj.*short read"):
            store.acquire(LAYER, [15])
        snap = store.snapshot()
        assert snap["read_errors"] == 1 and snap["ram_resident_experts"] == 1
        assert store.arena.num_free == 2 and not store.policy.is_resident(LAYER * 16 + 15)
        with store.lease(LAYER, [0, 1]) as (w0, w1):  # still works for what can be read
            assert same(w1, ckpt.expert(LAYER, 1))


def test_io_error_mid_read(ckpt, monkeypatch):
    real = os.preadv
    calls = {"n": 0}

    def flaky(fd, buffers, offset):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")
        return real(fd, buffers, offset)

    with make_store(ckpt, 4) as store:
        monkeypatch.setattr(reader_module.os, "preadv", flaky)
        with pytest.raises(ExpertReadError, match="read failed at byte .*Input/output error"):
            store.acquire(LAYER, [4])
        assert store.arena.num_free == 4
        with store.lease(LAYER, [4]) as (w,):  # retried: the next read succeeds
            assert same(w, ckpt.expert(LAYER, 4))


def test_missing_shard(ckpt):
    info = ckpt.info(f"model.layers.{LAYER}.mlp.experts.2.gate_proj.weight")
    with make_store(ckpt, 4) as store:
        info.shard.unlink()
        store.files._fds.clear()  # as if never opened
        with pytest.raises(ExpertReadError, match=rf"{info.shard.name}: tensor .*shard is missing"):
            store.acquire(LAYER, [2])
        assert store.arena.num_free == 4


def test_truncated_shard_header_check(tiny_checkpoint, tmp_path):
    path = tmp_path / "c"
    shutil.copytree(tiny_checkpoint, path)
    with Checkpoint.open(path) as c:
        truncate_expert(c, LAYER, 15)
    with Checkpoint.open(path) as c, make_store(c, 3) as store:
        with pytest.raises(CheckpointError, match="truncated shard"):
            store.acquire(LAYER, [15])
        assert store.arena.num_free == 3 and len(store.policy) == 0


def test_concurrent_lookups_of_one_expert_read_it_once(ckpt, monkeypatch):
    real = reader_module.read_expert_steps
    reads = []

    def slow(plan, files, slot):
        reads.append(plan.expert_id)
        time.sleep(0.2)
        return (yield from real(plan, files, slot))

    monkeypatch.setattr("kimi_local.cache.store.read_expert_steps", slow)
    with make_store(ckpt, 4) as store:
        results = []

        def worker():
            results.append(store.acquire(LAYER, [6])[0])

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert reads == [6]
        assert all(r is results[0] for r in results)
        snap = store.snapshot()
        assert snap["misses"] == 1 and snap["inflight_waits"] == 5 and snap["lookups"] == 6
        store.release(LAYER, [6] * 6)
        assert store.max_lease == 4


def test_prefetch_hides_reads_and_counts_recall(ckpt):
    with make_store(ckpt, 8) as store:
        store.prefetch(LAYER, np.array([[1, 2], [3, 1]]))
        store.wait_idle()
        with store.lease(LAYER, [1, 2, 5]):
            pass
        snap = store.snapshot()
        assert snap["prefetch_reads"] == 3 and snap["prefetch_hits"] == 2 and snap["misses"] == 1
        assert snap["prefetch_recall"] == pytest.approx(2 / 3)
        assert snap["prefetch_unused"] == 1 and snap["prefetch_extra_bytes"] == store.payload_bytes
        assert snap["stall_fraction"] == pytest.approx(1 / 3)
        assert store.max_lease == 8  # the prefetch holds were consumed


def test_prefetch_leaves_room_for_the_current_step(ckpt):
    with make_store(ckpt, 4) as store:
        store.prefetch(2, list(range(10)))
        assert store.snapshot()["prefetch_reads"] == 2  # at most half the slots
        with store.lease(LAYER, [0, 1]):
            pass


def test_get_expert_leases_until_another_layer(ckpt):
    with make_store(ckpt, 3) as store:
        a = store.get_expert(1, 0)
        assert store.get_expert(1, 0) is a
        store.get_expert(1, 1)
        assert store.max_lease == 1
        store.get_expert(2, 0)  # layer 1's experts are released now
        assert store.max_lease == 2
        assert same(store.get_expert(2, 0), ckpt.expert(2, 0))


def test_buffered_fallback_reads_the_same(ckpt):
    with make_store(ckpt, 2, use_direct_io=False) as store:
        with store.lease(2, [11]) as (w,):
            assert same(w, ckpt.expert(2, 11))
        assert store.snapshot()["direct_io_shards"] == 0


@pytest.mark.parametrize("refuse_at", ["open", "read"])
def test_o_direct_refusal_falls_back(ckpt, monkeypatch, refuse_at):
    """Some file systems refuse O_DIRECT at open, others at the first read (EINVAL): read buffered then."""
    real_open, real_preadv = os.open, os.preadv
    direct_fds = set()

    def fake_open(path, flags, *args):
        if flags & os.O_DIRECT:
            if refuse_at == "open":
                raise OSError(22, "Invalid argument")
            fd = real_open(path, flags, *args)
            direct_fds.add(fd)
            return fd
        fd = real_open(path, flags, *args)
        direct_fds.discard(fd)  # a closed O_DIRECT descriptor's number may be reused
        return fd

    def fake_preadv(fd, buffers, offset):
        if fd in direct_fds:
            raise OSError(22, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(reader_module.os, "open", fake_open)
    monkeypatch.setattr(reader_module.os, "preadv", fake_preadv)
    with make_store(ckpt, 2) as store:
        with store.lease(1, [3]) as (w,):
            assert same(w, ckpt.expert(1, 3))
        assert store.snapshot()["direct_io_shards"] == 0


def test_policy_follows_the_layer_steps(ckpt):
    """record_routing (once per layer step) drives the policy's clock and context starts: the store's policy
    is the same object the simulator measures."""
    with make_store(ckpt, 6) as store:
        model = store.policy.model
        for layer in (1, 2):  # a prompt of 5 tokens
            store.record_routing(layer, np.array([3, 4]), np.array([5.0, 5.0]), np.array([1.0, 1.0]), 5)
            with store.lease(layer, [3, 4], token_counts=[5, 5]):
                pass
        for layer in (1, 2):  # one decoded token
            store.record_routing(layer, np.array([3, 9]), np.array([1.0, 1.0]), np.array([0.5, 0.5]), 1)
            with store.lease(layer, [3, 9]):
                pass
        assert model.now == 6 and model.num_contexts == 1
        assert model.context_count(1 * 16 + 3) == pytest.approx(6, rel=1e-2)
        store.record_routing(1, np.array([7]), np.array([4.0]), np.array([1.0]), 4)  # the next prompt
        assert model.num_contexts == 2 and model.context_count(1 * 16 + 3) == 0


class HeldReads:
    """Replaces the store's expert reads: records the order they start in; the reads of the experts in `hold`
    wait at their start until `go(expert)`."""

    def __init__(self, monkeypatch, hold: tuple[int, ...]):
        self.started: list[int] = []
        self.entered = {e: threading.Event() for e in hold}
        self.opened = {e: threading.Event() for e in hold}
        real = reader_module.read_expert_steps

        def steps(plan, files, slot):
            e = plan.expert_id
            self.started.append(e)
            if e in self.entered:
                self.entered[e].set()
                assert self.opened[e].wait(5)
            return (yield from real(plan, files, slot))

        monkeypatch.setattr("kimi_local.cache.store.read_expert_steps", steps)

    def wait_entered(self, expert):
        assert self.entered[expert].wait(5)

    def go(self, expert):
        self.opened[expert].set()


def test_reads_start_in_order_of_need(ckpt, monkeypatch):
    """One I/O thread: prefetches go in the router's order (every token's best guess first), a demand miss of
    the current step goes before all of them, and the unused queued guesses are cancelled, never read."""
    held = HeldReads(monkeypatch, hold=(5, 9))
    with make_store(ckpt, 10, num_io_threads=1) as store:
        store.prefetch(2, np.array([[5, 3, 7], [9, 3, 4]]))  # rank order: 5, 9, 3, 7, 4
        held.wait_entered(5)
        step1 = threading.Thread(target=lambda: store.release(1, [12]) if store.acquire(1, [12]) else None)
        step1.start()
        time.sleep(0.05)  # layer 1's demand miss is queued behind the running read
        held.go(5)
        step1.join(5)
        held.wait_entered(9)  # the prefetch of 9 runs now; 3, 7, 4 wait in the queue
        step2 = threading.Thread(target=lambda: store.release(2, [5, 9]) if store.acquire(2, [5, 9]) else None)
        step2.start()
        time.sleep(0.05)  # the step used 5 and 9: the queued 3, 7, 4 are cancelled
        held.go(9)
        step2.join(5)
        store.wait_idle()
        snap = store.snapshot()
    assert held.started == [5, 12, 9]
    assert snap["prefetch_cancelled"] == 3 and snap["prefetch_unused"] == 0 and snap["prefetch_reads"] == 5
    assert snap["prefetch_hits"] == 1 and snap["inflight_waits"] == 1 and snap["misses"] == 1
    assert snap["ram_resident_experts"] == 3  # 1:12, 2:5, 2:9: the cancelled ones left no slot behind
    assert store.max_lease == 10
