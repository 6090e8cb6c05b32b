"""Prefix reuse: a request skips the prompt tokens whose KV rows a slot already holds, and generates exactly
what it would have generated from scratch."""

from __future__ import annotations

import pytest

from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.experts import TorchReferenceExperts

GREEDY = SamplingParams(temperature=0, max_new_tokens=6)
FIRST = [5, 17, 300, 2, 999, 45, 77, 8, 1000, 3]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    ckpt = Checkpoint.open(tiny_checkpoint)
    return KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt))


def fresh(model, prompt, params=GREEDY):
    return list(Engine(model, 96, 1).generate(prompt, params))


def run_all(engine):
    while engine.has_work():
        engine.step()


def test_the_next_turn_prefills_only_the_new_tokens(model):
    engine = Engine(model, 96, max_batch=2, prefill_chunk=4)
    reply = list(engine.generate(FIRST, GREEDY))
    computed = engine.stats.prompt_tokens
    follow_up = FIRST + reply + [11, 12, 13]
    again = list(engine.generate(follow_up, GREEDY))
    # the slot holds FIRST and every reply token but the last (whose row the next step would have written)
    assert engine.stats.cached_prompt_tokens == len(FIRST) + len(reply) - 1
    assert engine.stats.prompt_tokens - computed == 4
    assert again == fresh(model, follow_up)


def test_n_copies_of_one_prompt_prefill_it_once(model):
    engine = Engine(model, 96, max_batch=3, prefill_chunk=4)
    requests = [engine.add_request(FIRST, GREEDY) for _ in range(3)]
    run_all(engine)
    assert engine.stats.prompt_tokens == len(FIRST) + 2  # the others compute their last prompt token only
    assert engine.stats.cached_prompt_tokens == 2 * (len(FIRST) - 1)
    expected = fresh(model, FIRST)
    assert [r.output_ids for r in requests] == [expected] * 3


def test_the_slot_with_the_matching_conversation_is_chosen(model):
    engine = Engine(model, 96, max_batch=2)
    other = [900, 901, 902, 903, 904, 905]
    a = engine.add_request(FIRST, GREEDY)
    b = engine.add_request(other, GREEDY)
    run_all(engine)
    follow_up = other + b.output_ids + [7]
    again = engine.add_request(follow_up, GREEDY)
    run_all(engine)
    assert again.slot is None and engine.stats.cached_prompt_tokens == len(other) + len(b.output_ids) - 1
    assert again.output_ids == fresh(model, follow_up)
    assert a.output_ids == fresh(model, FIRST)


def test_an_unrelated_prompt_keeps_the_longer_context_for_later(model):
    engine = Engine(model, 96, max_batch=2)
    list(engine.generate(FIRST, GREEDY))  # slot 0 now holds FIRST and its reply
    list(engine.generate([400, 401], GREEDY))  # takes the empty slot
    list(engine.generate([500, 501, 502], GREEDY))  # takes the slot holding less
    before = engine.stats.cached_prompt_tokens
    list(engine.generate(FIRST + [6], GREEDY))
    assert engine.stats.cached_prompt_tokens - before == len(FIRST)


def test_a_failed_prefill_leaves_nothing_to_reuse(model, monkeypatch):
    engine = Engine(model, 96, max_batch=1, prefill_chunk=4)
    calls = {"n": 0}
    real = engine._prefill_forward.__func__

    def fail_on_second_chunk(self, request):
        calls["n"] += 1
        if calls["n"] in (2, 3):  # the second chunk and its retry
            raise OSError("read error")
        return real(self, request)

    monkeypatch.setattr(Engine, "_prefill_forward", fail_on_second_chunk)
    request = engine.add_request(FIRST, GREEDY)
    run_all(engine)
    assert request.finish_reason == "error"
    monkeypatch.undo()
    assert list(engine.generate(FIRST, GREEDY)) == fresh(model, FIRST)
    assert engine.stats.cached_prompt_tokens == 0


def test_an_aborted_prefill_shares_what_it_computed(model):
    engine = Engine(model, 96, max_batch=1, prefill_chunk=4)
    request = engine.add_request(FIRST, GREEDY)
    engine.step()  # one chunk: 4 rows
    engine.abort(request.request_id)
    engine.step()
    assert request.finish_reason == "abort"
    assert list(engine.generate(FIRST, GREEDY)) == fresh(model, FIRST)
    assert engine.stats.cached_prompt_tokens == 4
