"""The OpenAI API driven by the official `openai` client against the real server on the tiny model."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server.conftest import DEFAULT_REPLY, MAX_CONTEXT, PREFILL, PREFILL_CONTINUATION

MESSAGES = [{"role": "user", "content": "Hello there, who are you?"}]


@pytest.fixture(scope="module")
def client(real_server):
    return openai.OpenAI(base_url=real_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def scripted(scripted_server):
    return openai.OpenAI(base_url=scripted_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["kimi-tiny"]
    assert client.models.retrieve("kimi-tiny").id == "kimi-tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_chat_non_stream_shape_and_usage(client, real_server):
    r = client.chat.completions.create(model="kimi-tiny", messages=MESSAGES, max_tokens=6, seed=3)
    assert r.object == "chat.completion" and r.model == "kimi-tiny"
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    prompt_ids = real_server.state.chat_format.encode_messages(MESSAGES)
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert 1 <= r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_limits_the_reply(client):
    # Greedy on the random model: 7 tokens unless it happens to produce <|im_end|> first.
    for field in ("max_tokens", "max_completion_tokens"):
        r = client.chat.completions.create(model="m", messages=MESSAGES, temperature=0, **{field: 7})
        if r.choices[0].finish_reason == "length":
            assert r.usage.completion_tokens == 7
        else:
            assert r.usage.completion_tokens < 7


def test_scripted_reply_is_exact_and_ends_with_stop(scripted):
    r = scripted.chat.completions.create(model="m", messages=MESSAGES)
    assert r.choices[0].message.content == DEFAULT_REPLY
    assert r.choices[0].finish_reason == "stop"
    r = scripted.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert DEFAULT_REPLY.startswith(r.choices[0].message.content)


def test_stream_equals_non_stream_with_the_same_seed(client):
    kwargs = dict(model="m", messages=MESSAGES, max_tokens=12, seed=11, temperature=1.0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [full.choices[0].finish_reason]
    usage, full_usage = chunks[-1].usage, full.usage
    assert chunks[-1].choices == [] and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        full_usage.prompt_tokens, full_usage.completion_tokens, full_usage.total_tokens)
    # the same prompt again: all of it but the last token was still in a slot
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


def test_seed_reproducibility(client):
    kwargs = dict(model="m", messages=MESSAGES, max_tokens=10, temperature=1.0)
    a = client.chat.completions.create(seed=123, **kwargs).choices[0].message.content
    b = client.chat.completions.create(seed=123, **kwargs).choices[0].message.content
    c = client.chat.completions.create(seed=124, **kwargs).choices[0].message.content
    assert a == b
    assert a != c  # 10 tokens at temperature 1 over a 1024 vocabulary: equal only by a miracle


def test_n_choices_sampled_together(client):
    kwargs = dict(model="m", messages=MESSAGES, max_tokens=8, temperature=1.0, seed=5)
    r = client.chat.completions.create(n=3, **kwargs)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) == 3  # seeds 5, 6, 7
    # Choice i uses seed + i: choice 1 equals a single request seeded 6.
    single = client.chat.completions.create(**{**kwargs, "seed": 6}).choices[0].message.content
    assert texts[1] == single
    assert r.usage.completion_tokens <= 3 * 8
    assert r.usage.prompt_tokens == client.chat.completions.create(**kwargs).usage.prompt_tokens  # counted once
    streamed = list(client.chat.completions.create(n=3, stream=True, **kwargs))
    by_index = {i: "".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i)
                for i in range(3)}
    assert [by_index[i] for i in range(3)] == texts


def test_ignore_eos_generates_past_the_end_of_turn(scripted):
    r = scripted.chat.completions.create(model="m", messages=MESSAGES, max_tokens=40, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 40
    assert r.choices[0].message.content == DEFAULT_REPLY  # <|im_end|> repeated is never shown


def test_continue_final_message(scripted):
    messages = [*MESSAGES, {"role": "assistant", "content": PREFILL}]
    r = scripted.chat.completions.create(model="m", messages=messages, extra_body={"continue_final_message": True})
    assert r.choices[0].message.content == PREFILL_CONTINUATION
    with pytest.raises(openai.BadRequestError):  # only an assistant turn can be continued
        scripted.chat.completions.create(model="m", messages=MESSAGES, extra_body={"continue_final_message": True})


def test_stop_sequence_on_scripted_text(scripted):
    r = scripted.chat.completions.create(model="m", messages=MESSAGES, stop=["fox", "nothing"])
    assert r.choices[0].message.content == "The quick brown "
    assert r.choices[0].finish_reason == "stop"
    chunks = list(scripted.chat.completions.create(model="m", messages=MESSAGES, stop="lazy", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The quick brown fox jumps over the "


def test_stop_sequence_on_the_real_model(client):
    kwargs = dict(model="m", messages=MESSAGES, max_tokens=20, temperature=0)
    text = client.chat.completions.create(**kwargs).choices[0].message.content
    cut = next((i for i in range(3, len(text) - 2) if text[i:i + 2].strip() and text.find(text[i:i + 2]) == i), None)
    if cut is None:
        pytest.skip("the greedy output has no usable substring")
    stop = text[cut:cut + 2]
    r = client.chat.completions.create(stop=[stop], **kwargs)
    assert r.choices[0].message.content == text[:cut]
    assert r.choices[0].finish_reason == "stop"


def test_logprobs(client):
    r = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
                                       top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens - (r.choices[0].finish_reason == "stop")
    for e in entries:
        assert len(e.top_logprobs) == 3
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)  # greedy: the chosen token is the best one
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token


def test_completions_non_stream_stream_and_echo(client, real_server):
    r = client.completions.create(model="m", prompt="Once upon a time", max_tokens=5, temperature=0)
    (choice,) = r.choices
    assert r.object == "text_completion" and choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(real_server.state.tokenizer.encode("Once upon a time"))
    streamed = list(client.completions.create(model="m", prompt="Once upon a time", max_tokens=5, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == choice.text
    echoed = client.completions.create(model="m", prompt="Once upon a time", max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == "Once upon a time" + choice.text


def test_completions_token_prompts_batch_and_logprobs(client, real_server):
    ids = real_server.state.tokenizer.encode("Once upon a time")
    r = client.completions.create(model="m", prompt=[ids, ids], max_tokens=3, temperature=0, n=2, logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert len({c.text for c in r.choices}) == 1  # greedy: all four agree
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == len(lp.top_logprobs)
    assert r.usage.prompt_tokens == 2 * len(ids)


def test_unknown_fields_are_ignored(real_server):
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 2, "presence_penalty": 0.5, "frequency_penalty": 0.1,
            "response_format": {"type": "text"}, "user": "me", "some_future_field": [1, 2]}
    r = httpx.post(real_server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


def test_default_token_limit_is_the_rest_of_the_context(client, real_server):
    ids = real_server.state.tokenizer.encode("the cat sat on the mat " * 200)[: MAX_CONTEXT - 6]
    r = client.completions.create(model="m", prompt=ids, max_tokens=None, temperature=0)
    room = MAX_CONTEXT - len(ids)
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == room
    else:
        assert r.usage.completion_tokens < room
