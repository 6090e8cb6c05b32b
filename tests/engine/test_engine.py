import pytest
import torch

from kimi_local.engine.engine import ContextLengthError, Engine
from kimi_local.engine.sampling import SamplingParams, make_generator, sample
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.experts import TorchReferenceExperts

PROMPT = [5, 17, 300, 2, 999, 45, 77]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    ckpt = Checkpoint.open(tiny_checkpoint)
    return KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt))


def run_all(engine):
    outputs = []
    while engine.has_work():
        outputs += engine.step()
    return outputs


def test_chunked_prefill_equals_one_chunk(model):
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    one = list(Engine(model, 64, 1, prefill_chunk=64).generate(PROMPT, greedy))
    chunked = list(Engine(model, 64, 1, prefill_chunk=2).generate(PROMPT, greedy))
    assert one == chunked


def test_batched_decode_equals_one_at_a_time(model):
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    prompts = [PROMPT, PROMPT[:3], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42]]
    alone = [list(Engine(model, 64, 1).generate(p, greedy)) for p in prompts]
    engine = Engine(model, 64, max_batch=3, prefill_chunk=4)  # 4 requests, 3 slots: one waits for a slot
    requests = [engine.add_request(p, greedy) for p in prompts]
    run_all(engine)
    assert [r.output_ids for r in requests] == alone
    assert engine.stats.decode_steps < sum(len(a) for a in alone)  # decoded together


def test_seeded_sampling_is_reproducible_and_seed_dependent(model):
    engine = Engine(model, 64, 2)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=123, max_new_tokens=16)
    a = list(engine.generate(PROMPT, params))
    b = list(engine.generate(PROMPT, params))
    c = list(engine.generate(PROMPT, SamplingParams(temperature=1.0, top_p=0.9, seed=124, max_new_tokens=16)))
    assert a == b and a != c


def test_stop_ids_and_max_new_tokens(model):
    engine = Engine(model, 64, 1)
    free = list(engine.generate(PROMPT, SamplingParams(temperature=0, max_new_tokens=8)))
    assert len(free) == 8
    stopped = list(engine.generate(PROMPT, SamplingParams(temperature=0, max_new_tokens=8, stop_ids=frozenset({free[3]}))))
    assert stopped == free[: free.index(free[3]) + 1]


def test_context_limit(model):
    engine = Engine(model, max_context=16, max_batch=1)
    with pytest.raises(ContextLengthError, match="16"):
        engine.add_request(list(range(1, 17)), SamplingParams())
    out = list(engine.generate(list(range(1, 13)), SamplingParams(temperature=0, max_new_tokens=100)))
    assert len(out) == 4  # 12 prompt + 4 generated fill the 16 positions
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request([5, 10**6], SamplingParams())


def test_abort_frees_the_slot(model):
    engine = Engine(model, 64, max_batch=1)
    first = engine.add_request(PROMPT, SamplingParams(max_new_tokens=1000))
    second = engine.add_request(PROMPT, SamplingParams(temperature=0, max_new_tokens=3))
    for _ in range(3):
        engine.step()
    assert engine.num_running == 1 and second.slot is None
    engine.abort(first.request_id)
    run_all(engine)
    assert first.finish_reason == "abort" and second.finish_reason == "length" and len(second.output_ids) == 3


def test_a_failing_step_fails_its_request_not_the_engine(model, monkeypatch):
    engine = Engine(model, 64, 2)
    calls = {"n": 0}
    real = model.forward

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:  # the prefill chunk and its one retry
            raise OSError("expert read failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    bad = engine.add_request(PROMPT, SamplingParams(max_new_tokens=4))
    outputs = run_all(engine)
    assert bad.finish_reason == "error" and "expert read failed" in bad.error
    assert any(o.error for o in outputs)
    assert len(list(engine.generate(PROMPT, SamplingParams(max_new_tokens=4)))) == 4


def test_a_transient_prefill_failure_is_retried(model, monkeypatch):
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    expected = list(Engine(model, 64, 1).generate(PROMPT, greedy))
    engine = Engine(model, 64, 1, prefill_chunk=3)
    calls = {"n": 0}
    real = model.forward

    def fails_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second chunk, half way through the prompt
            raise OSError("EIO reading an expert")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", fails_once)
    assert list(engine.generate(PROMPT, greedy)) == expected
    assert engine.stats.failed_requests == 0


def test_sampling_filters():
    logits = torch.tensor([0.0, 5.0, 4.9, -3.0])
    g = make_generator(0)
    assert {sample(logits, SamplingParams(temperature=1.0, top_k=1), g)[0] for _ in range(20)} == {1}
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.5), g)[0] for _ in range(50)}
    assert picks == {1}  # the top token alone holds > 50% of the mass
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.9), g)[0] for _ in range(200)}
    assert picks == {1, 2}
    token, lp = sample(logits, SamplingParams(temperature=0, logprobs=2), g)
    assert token == 1 and [t for t, _ in lp.top] == [1, 2]
    assert lp.logprob == pytest.approx(float(logits.log_softmax(-1)[1]))


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1},
                                    {"max_new_tokens": 0}, {"logprobs": 21}])
def test_bad_sampling_params(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_a_long_prefill_alternates_with_decoding(model):
    engine = Engine(model, 128, max_batch=2, prefill_chunk=4)
    streaming = engine.add_request(PROMPT, SamplingParams(temperature=0, max_new_tokens=40))
    while not streaming.output_ids:
        engine.step()
    long_prompt = engine.add_request(list(range(1, 41)), SamplingParams(temperature=0, max_new_tokens=2))
    before = len(streaming.output_ids)
    steps = 0
    while long_prompt.num_prefilled < 40:
        engine.step()
        steps += 1
    # 10 chunks of 4 tokens, each followed by a decode step for the running stream
    assert len(streaming.output_ids) - before >= 9
    alone = list(Engine(model, 128, 1).generate(PROMPT, SamplingParams(temperature=0, max_new_tokens=40)))
    run_all(engine)
    assert streaming.output_ids == alone


def test_a_sampling_failure_fails_that_request_only(model, monkeypatch):
    import kimi_local.engine.engine as engine_module

    engine = Engine(model, 64, max_batch=2)
    a = engine.add_request(PROMPT, SamplingParams(temperature=0, max_new_tokens=4))
    b = engine.add_request(PROMPT[:3], SamplingParams(temperature=0.7, max_new_tokens=4))
    while not (a.output_ids and b.output_ids):
        engine.step()
    real = engine_module.sample

    def flaky(logits, params, generator):
        if params.temperature == 0.7:
            raise RuntimeError("probability tensor contains inf or nan")
        return real(logits, params, generator)

    monkeypatch.setattr(engine_module, "sample", flaky)
    seen: dict[int, list] = {a.request_id: [], b.request_id: []}
    for out in run_all(engine):
        seen[out.request_id].append(out)
    assert b.finish_reason == "error" and "nan" in b.error
    assert a.finish_reason == "length" and len(a.output_ids) == 4
    # every token the model consumed for `a` reached its stream, and the stream ended
    assert [o.token_id for o in seen[a.request_id]] == a.output_ids[-len(seen[a.request_id]):]
    assert seen[a.request_id][-1].finish_reason == "length"
