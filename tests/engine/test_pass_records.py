"""A failed forward pass leaves no routing record: PassRecords on its own, and the engine's retries through a real
expert store whose reads fail (routing statistics, trace recorder and the store's routing profile)."""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from kimi_local.cache import store as store_module
from kimi_local.cache.backend import CachedExperts
from kimi_local.cache.reader import expert_slot_bytes
from kimi_local.cache.recorder import TraceRecorder
from kimi_local.cache.store import ExpertStore
from kimi_local.cache.traces import DECODE
from kimi_local.engine.engine import Engine
from kimi_local.engine.pass_records import PassRecords, remove_routing_hook
from kimi_local.engine.routing_stats import RoutingStats
from kimi_local.engine.sampling import SamplingParams
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel

PROMPT = [5, 17, 300, 2, 999, 45, 77]
OTHER_PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 9]
LAST_MOE_LAYER = 2  # tiny preset: layer 0 dense, MoE layers 1 and 2


# -- PassRecords on a stand-in model -----------------------------------------------------------------------


class FakeModel:
    """What PassRecords touches: the hook list, and an expert backend that records routing of its own."""

    def __init__(self):
        self.routing_hooks: list = []
        self.experts = FakeBackend()

    def run(self, calls, fail_after: int | None = None):
        for i, (layer, ids) in enumerate(calls):
            if fail_after is not None and i == fail_after:
                raise OSError("expert read failed")
            for hook in self.routing_hooks:
                hook(layer, ids, None)
            self.experts.record(layer, ids)


class FakeBackend:
    def __init__(self):
        self.profile: list = []
        self._defer = None

    def record(self, layer, ids):
        if self._defer is None:
            self._profile(layer, ids)
        else:
            self._defer(self._profile, layer, ids)

    def _profile(self, layer, ids):
        self.profile.append((layer, ids))

    def routing_deferred(self, defer):
        backend = self

        class _Open:
            def __enter__(self):
                backend._defer = defer

            def __exit__(self, *exc):
                backend._defer = None

        return _Open()


CALLS = [(1, "a"), (2, "b"), (1, "c"), (2, "d")]


def recording_hook(seen: list):
    return lambda layer, ids, predicted: seen.append((layer, ids))


def test_records_arrive_in_order_only_after_the_pass():
    model, seen = FakeModel(), []
    hook = recording_hook(seen)
    model.routing_hooks.append(hook)
    records = PassRecords(model)
    with records.held():
        model.run(CALLS)
        assert seen == [] and model.experts.profile == []  # nothing while the pass runs
        assert hook not in model.routing_hooks
    assert seen == CALLS and model.experts.profile == CALLS
    assert model.routing_hooks == [hook]


def test_a_failed_pass_leaves_nothing_and_the_retry_counts_once():
    model, seen = FakeModel(), []
    hook = recording_hook(seen)
    model.routing_hooks.append(hook)
    records = PassRecords(model)
    with pytest.raises(OSError, match="expert read failed"):
        with records.held():
            model.run(CALLS, fail_after=3)
    assert seen == [] and model.experts.profile == [] and model.routing_hooks == [hook]
    with records.held():
        model.run(CALLS)
    assert seen == CALLS and model.experts.profile == CALLS


def test_hooks_added_or_removed_during_a_pass():
    model, kept, removed, late = FakeModel(), [], [], []
    keep_hook, remove_hook, late_hook = recording_hook(kept), recording_hook(removed), recording_hook(late)
    model.routing_hooks += [keep_hook, remove_hook]
    with PassRecords(model).held():
        model.run(CALLS[:2])
        model.routing_hooks.append(late_hook)  # sees the rest of this pass, live
        remove_routing_hook(model, remove_hook)  # gets nothing of this pass and is not put back
        model.run(CALLS[2:])
        assert late == CALLS[2:]
    assert kept == CALLS and removed == [] and late == CALLS[2:]
    assert model.routing_hooks == [keep_hook, late_hook]


def test_a_failing_recorder_is_logged_and_the_others_still_record(caplog):
    model, seen = FakeModel(), []

    def broken(layer, ids, predicted):
        raise ValueError("recorder bug")

    model.routing_hooks += [broken, recording_hook(seen)]
    with caplog.at_level(logging.ERROR, logger="kimi_local.engine.pass_records"):
        with PassRecords(model).held():
            model.run(CALLS)
    assert seen == CALLS and model.experts.profile == CALLS
    assert "recorder bug" in caplog.text


def test_routing_stats_detach_during_a_pass():
    model = FakeModel()
    stats = RoutingStats(num_layers=3, num_experts=4)
    model.routing_hooks.append(stats)
    with PassRecords(model).held():
        for hook in model.routing_hooks:
            hook(1, torch.tensor([[0, 1]]), None)
        stats.detach(model)
    assert model.routing_hooks == [] and stats.snapshot().routed_tokens == 0


# -- the engine's retries over a real expert store -----------------------------------------------------------


def _failing_read():
    raise OSError(errno.EIO, os.strerror(errno.EIO))
    yield  # a generator, like the store's chunked read


class LayerFault:
    """Below the store, as a disk error would be: once armed, the next expert read of `layer` fails with EIO."""

    def __init__(self, monkeypatch):
        self._lock = threading.Lock()
        self.armed_layer: int | None = None
        self.injected = 0
        real = store_module.read_expert_steps

        def gated(plan, files, slot):
            with self._lock:
                fail = plan.layer_idx == self.armed_layer
                if fail:
                    self.armed_layer = None
                    self.injected += 1
            return _failing_read() if fail else real(plan, files, slot)

        monkeypatch.setattr(store_module, "read_expert_steps", gated)

    def arm(self, layer: int) -> None:
        with self._lock:
            self.armed_layer = layer


@dataclass
class Records:
    outputs: list[list[int]]
    stats: RoutingStats
    trace: object | None
    usage: np.ndarray
    router_mass: np.ndarray
    profile_tokens: float
    failed_requests: int


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    with Checkpoint.open(tiny_checkpoint) as c:
        yield c


def run_engine(ckpt, prompts, fault_when, inject, max_batch=1, prefill_chunk=3, max_new_tokens=4,
               trace=False) -> Records:
    """Runs `prompts` to completion on a fresh model over a 3-slot store (every layer step reads). Before the first
    step for which `fault_when(engine)` holds, `inject(model)` arms one fault."""
    c = ckpt.config
    with ExpertStore(ckpt, 3 * expert_slot_bytes(ckpt), num_io_threads=2) as store:
        model = KimiModel.from_checkpoint(ckpt, CachedExperts(store))
        model.prefetch_enabled = False  # every read is a demand read of an expert the step uses: a fault fails it
        stats = RoutingStats.for_model(model)
        recorder = TraceRecorder(c.moe_layer_ids, c.n_routed_experts, c.num_experts_per_tok) if trace else None
        if recorder is not None:
            model.routing_hooks.append(recorder)
        engine = Engine(model, 64, max_batch, prefill_chunk=prefill_chunk)
        greedy = SamplingParams(temperature=0, max_new_tokens=max_new_tokens)
        requests = [engine.add_request(p, greedy) for p in prompts]
        armed = False
        while engine.has_work():
            if not armed and fault_when(engine):
                inject(model)
                armed = True
            engine.step()
            if recorder is not None and requests[0].output_ids:
                recorder.phase = DECODE  # every later step decodes (one sequence)
        assert armed, "the fault's moment never came"
        return Records([r.output_ids for r in requests], stats, recorder.trace() if recorder else None,
                       store.profile.usage.copy(), store.profile.router_mass.copy(), store.profile.tokens,
                       engine.stats.failed_requests)


def at_start(engine) -> bool:
    return True


def no_fault(model) -> None:
    pass


def assert_same_records(got: Records, expected: Records) -> None:
    assert got.outputs == expected.outputs and got.failed_requests == expected.failed_requests == 0
    a, b = got.stats.snapshot(), expected.stats.snapshot()
    assert a.routed_tokens == b.routed_tokens
    np.testing.assert_array_equal(a.load, b.load)
    np.testing.assert_array_equal(got.usage, expected.usage)
    np.testing.assert_array_equal(got.router_mass, expected.router_mass)
    assert got.profile_tokens == expected.profile_tokens
    if expected.trace is not None:
        np.testing.assert_array_equal(got.trace.experts, expected.trace.experts)
        np.testing.assert_array_equal(got.trace.phase, expected.trace.phase)


def second_chunk(engine) -> bool:
    """The first request has prefilled its first chunk and not yet the rest."""
    r = engine._running[0] if engine._running else None
    return r is not None and 0 < r.num_prefilled < len(r.prompt_ids)


def decoding(engine) -> bool:
    return len(engine._running) == 1 and bool(engine._running[0].output_ids)


def both_decoding(engine) -> bool:
    running = engine._running
    return len(running) == 2 and all(r.output_ids and r.num_prefilled == len(r.prompt_ids) for r in running)


def test_a_retried_prefill_chunk_is_recorded_once(ckpt, monkeypatch, caplog):
    """The second chunk's pass fails at the last MoE layer's expert read, after every MoE layer has routed (so the
    failed attempt had reported a complete step to every recorder); the retry succeeds."""
    expected = run_engine(ckpt, [PROMPT], at_start, no_fault, trace=True)
    fault = LayerFault(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kimi_local.engine.engine"):
        got = run_engine(ckpt, [PROMPT], second_chunk, lambda model: fault.arm(LAST_MOE_LAYER), trace=True)
    assert fault.injected == 1 and "retrying the chunk once" in caplog.text
    assert got.stats.snapshot().routed_tokens == len(PROMPT) + 3  # the prompt and 3 decode inputs, once each
    assert_same_records(got, expected)


def test_a_retried_decode_step_is_recorded_once(ckpt, monkeypatch, caplog):
    expected = run_engine(ckpt, [PROMPT], at_start, no_fault, trace=True)
    fault = LayerFault(monkeypatch)
    with caplog.at_level(logging.ERROR, logger="kimi_local.engine.engine"):
        got = run_engine(ckpt, [PROMPT], decoding, lambda model: fault.arm(LAST_MOE_LAYER), trace=True)
    assert fault.injected == 1 and "decode step failed" in caplog.text
    assert_same_records(got, expected)


def fail_next_forward_before_routing(model) -> None:
    """The next pass fails before its first layer: it routes nothing (the reference for a split batch)."""
    real = model.forward

    def fails_once(*args, **kwargs):
        model.forward = real
        raise OSError("failed before routing")

    model.forward = fails_once


def test_a_decode_batch_retried_request_by_request_is_recorded_once(ckpt, monkeypatch):
    """A failed batch is retried one request at a time, so the passes differ from a run with no fault; the
    reference is a run whose batch fails before routing anything, and the records must match it exactly."""
    prompts, sizes = [PROMPT, OTHER_PROMPT], dict(max_batch=2, prefill_chunk=64, max_new_tokens=6)
    expected = run_engine(ckpt, prompts, both_decoding, fail_next_forward_before_routing, **sizes)
    fault = LayerFault(monkeypatch)
    got = run_engine(ckpt, prompts, both_decoding, lambda model: fault.arm(LAST_MOE_LAYER), **sizes)
    assert fault.injected == 1
    assert_same_records(got, expected)
    no_fault_run = run_engine(ckpt, prompts, at_start, no_fault, **sizes)
    assert got.outputs == no_fault_run.outputs
    assert got.stats.snapshot().routed_tokens == no_fault_run.stats.snapshot().routed_tokens
    assert got.profile_tokens == no_fault_run.profile_tokens
