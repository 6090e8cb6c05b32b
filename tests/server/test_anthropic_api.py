"""The Anthropic Messages API on the same port, driven by the official `anthropic` client: text exchanges,
streaming events, stop sequences, max_tokens, token counting, Anthropic-shaped errors, API keys."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from kimi_local.server.app import create_app
from kimi_local.server.runner import ServerThread
from kimi_local.server.state import ServerState
from tests.server.conftest import DEFAULT_REPLY, PREFILL, PREFILL_CONTINUATION
from tests.server.scripted_model import FAIL_MARKER

HELLO = [{"role": "user", "content": "Hello there!"}]


@pytest.fixture(scope="module")
def scripted(scripted_server):
    return anthropic.Anthropic(base_url=scripted_server.url, api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def real(real_server):
    return anthropic.Anthropic(base_url=real_server.url, api_key="x", max_retries=0, timeout=60)


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["type"] == name
            events.append((name, data))
    return events


def assert_anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


def test_text_exchange(scripted, scripted_server):
    m = scripted.messages.create(model="kimi", max_tokens=100, messages=HELLO, system="Be brief.")
    assert m.type == "message" and m.role == "assistant" and m.model == "kimi-scripted"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == DEFAULT_REPLY
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    expected = scripted_server.state.chat_format.encode_messages(
        [{"role": "system", "content": "Be brief."}, *HELLO])
    assert m.usage.input_tokens == len(expected)
    assert scripted_server.engine.model.prompts[-1] == expected
    end = 1  # the <|im_end|> token counts as output
    assert m.usage.output_tokens == len(scripted_server.state.tokenizer.encode(DEFAULT_REPLY)) + end


def test_stream_text_and_event_sequence(scripted, scripted_server):
    with scripted.messages.stream(model="kimi", max_tokens=100, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == DEFAULT_REPLY and final.content[0].text == DEFAULT_REPLY and final.stop_reason == "end_turn"
    body = {"model": "kimi", "max_tokens": 100, "messages": HELLO, "stream": True}
    with httpx.stream("POST", scripted_server.url + "/v1/messages", json=body,
                      headers={"anthropic-version": "2023-06-01"}) as response:
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == final.usage.output_tokens


def test_stop_sequences(scripted):
    m = scripted.messages.create(model="k", max_tokens=100, messages=HELLO, stop_sequences=["brown", "zzz"])
    assert m.content[0].text == "The quick " and m.stop_reason == "stop_sequence" and m.stop_sequence == "brown"
    with scripted.messages.stream(model="k", max_tokens=100, messages=HELLO, stop_sequences=["lazy"]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "The quick brown fox jumps over the " and final.stop_sequence == "lazy"


def test_final_assistant_turn_is_continued(scripted, scripted_server):
    m = scripted.messages.create(model="k", max_tokens=50, messages=[*HELLO, {"role": "assistant", "content": PREFILL}])
    assert m.content[0].text == PREFILL_CONTINUATION and m.stop_reason == "end_turn"
    prompt = scripted_server.state.tokenizer.decode(scripted_server.engine.model.prompts[-1])
    assert prompt.endswith("<|im_assistant|>assistant<|im_middle|>" + PREFILL)


def test_max_tokens(scripted):
    m = scripted.messages.create(model="k", max_tokens=3, messages=HELLO)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3
    assert DEFAULT_REPLY.startswith(m.content[0].text)


def test_count_tokens_matches_the_prompt(scripted, scripted_server):
    system = [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}]
    count = scripted.messages.count_tokens(model="k", messages=HELLO, system=system)
    expected = scripted_server.state.chat_format.encode_messages(
        [{"role": "system", "content": "Rule one.\nRule two."}, *HELLO])
    assert count.input_tokens == len(expected)


def next_turn(first: list[dict], reply: str, question: str) -> list[dict]:
    return [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": question}]


def prompt_size(client, messages) -> int:
    return client.messages.count_tokens(model="k", messages=messages).input_tokens


def test_a_second_turn_reports_the_reused_prompt_tokens(scripted):
    """The next turn resends the conversation; the KV rows of the first turn's prompt are still in a slot, and
    Anthropic's usage splits the prompt: cache_read_input_tokens (reused) + input_tokens (computed) = all of it."""
    first = [{"role": "user", "content": "Remember the number seven."}]
    m1 = scripted.messages.create(model="k", max_tokens=100, messages=first)
    second = next_turn(first, m1.content[0].text, "Which number was it?")
    m2 = scripted.messages.create(model="k", max_tokens=100, messages=second)
    for m, messages in ((m1, first), (m2, second)):
        assert m.usage.cache_creation_input_tokens == 0
        assert m.usage.input_tokens + m.usage.cache_read_input_tokens == prompt_size(scripted, messages)
    assert m2.usage.cache_read_input_tokens >= prompt_size(scripted, first)  # at least the whole first prompt
    assert m2.usage.input_tokens >= 1  # the new turn's tokens (at least the last one) are computed


def test_streamed_usage_reports_the_reused_prompt_tokens(scripted, scripted_server):
    """message_start counts the whole prompt as input (reuse is decided after it is sent); message_delta carries
    the split, which the client's accumulated message takes over."""
    first = [{"role": "user", "content": "Remember the colour green."}]
    with scripted.messages.stream(model="k", max_tokens=100, messages=first) as stream:
        reply = stream.get_final_message().content[0].text
    second = next_turn(first, reply, "Which colour was it?")
    total = prompt_size(scripted, second)
    body = {"model": "k", "max_tokens": 100, "messages": second, "stream": True}
    with httpx.stream("POST", scripted_server.url + "/v1/messages", json=body) as response:
        events = dict(sse_events(response))
    assert events["message_start"]["message"]["usage"] == {
        "input_tokens": total, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    usage = events["message_delta"]["usage"]
    assert usage["cache_read_input_tokens"] >= prompt_size(scripted, first)
    assert usage["cache_creation_input_tokens"] == 0
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == total and usage["output_tokens"] > 0
    with scripted.messages.stream(model="k", max_tokens=100, messages=second) as stream:  # the same prompt again
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == total - 1 and final.usage.input_tokens == 1


def test_same_engine_as_the_openai_api(real, real_server):
    """Greedy decoding gives the same text through both APIs (temperature 0 stays 0 after scaling)."""
    # This SDK version has no sampling arguments; older clients (and Claude Code) send them in the body.
    m = real.messages.create(model="k", max_tokens=8, messages=HELLO, extra_body={"temperature": 0})
    oa = openai.OpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0)
    r = oa.chat.completions.create(model="k", messages=HELLO, max_tokens=8, temperature=0)
    text = "".join(b.text for b in m.content if b.type == "text")
    assert text == r.choices[0].message.content
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == r.usage.prompt_tokens


@pytest.mark.parametrize("body, needle", [
    ({"model": "k", "messages": HELLO}, "max_tokens"),
    ({"model": "k", "max_tokens": 0, "messages": HELLO}, "max_tokens"),
    ({"model": "k", "max_tokens": 5, "messages": []}, "messages"),
    ({"model": "k", "max_tokens": 5, "messages": HELLO, "temperature": 1.5}, "temperature"),
    ({"model": "k", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"model": "k", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
     "messages.0.content.0.type"),
    ({"model": "k", "max_tokens": 5, "messages": HELLO, "tools": [{"type": "bash_20250124", "name": "bash"}]},
     "tools.0.type"),
    ({"model": "k", "max_tokens": 5, "messages": HELLO, "tool_choice": {"type": "tool"},
      "tools": [{"name": "f", "input_schema": {"type": "object"}}]}, "tool_choice"),
])
def test_bad_requests_are_anthropic_shaped(scripted_server, body, needle):
    r = httpx.post(scripted_server.url + "/v1/messages", json=body)
    assert needle in assert_anthropic_error(r, 400, "invalid_request_error")


def test_malformed_json_and_unknown_route(scripted_server):
    r = httpx.post(scripted_server.url + "/v1/messages", content=b"{oops", headers={"content-type": "application/json"})
    assert_anthropic_error(r, 400, "invalid_request_error")
    assert_anthropic_error(httpx.post(scripted_server.url + "/v1/messages/batches", json={}), 404, "not_found_error")


def test_client_raises_typed_errors(scripted):
    with pytest.raises(anthropic.BadRequestError) as info:
        scripted.messages.create(model="k", max_tokens=5, messages=HELLO, extra_body={"top_p": 3})
    assert info.value.body["type"] == "error"


def test_context_overflow(scripted_server):
    long = [{"role": "user", "content": "lorem ipsum dolor " * 600}]
    r = httpx.post(scripted_server.url + "/v1/messages", json={"model": "k", "max_tokens": 5, "messages": long})
    assert "maximum context length is 512" in assert_anthropic_error(r, 400, "invalid_request_error")


def test_x_api_key_and_bearer_are_both_accepted(scripted_server):
    s = scripted_server.state
    state = ServerState(s.service, s.tokenizer, s.chat_format, s.model_name, api_key="k3y", metrics=s.metrics)
    with ServerThread(create_app(state)) as thread:
        good = anthropic.Anthropic(base_url=thread.url, api_key="k3y", max_retries=0)  # sends x-api-key
        assert good.messages.create(model="k", max_tokens=2, messages=HELLO).content
        bearer = anthropic.Anthropic(base_url=thread.url, auth_token="k3y", max_retries=0)  # Authorization: Bearer
        assert bearer.messages.count_tokens(model="k", messages=HELLO).input_tokens > 0
        bad = anthropic.Anthropic(base_url=thread.url, api_key="nope", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.create(model="k", max_tokens=2, messages=HELLO)
        r = httpx.post(thread.url + "/v1/messages", json={"model": "k", "max_tokens": 2, "messages": HELLO})
        assert_anthropic_error(r, 401, "authentication_error")


def test_engine_failure_is_an_anthropic_error(scripted, scripted_server):
    failing = [{"role": "user", "content": f"{FAIL_MARKER} please"}]
    with pytest.raises(anthropic.InternalServerError) as info:
        scripted.messages.create(model="k", max_tokens=5, messages=failing)
    assert info.value.body["error"]["type"] == "api_error"
    body = {"model": "k", "max_tokens": 5, "messages": failing, "stream": True}
    with httpx.stream("POST", scripted_server.url + "/v1/messages", json=body) as response:
        events = sse_events(response)
    assert [name for name, _ in events] == ["message_start", "ping", "error"]
    assert events[-1][1]["error"]["type"] == "api_error"
    with pytest.raises(anthropic.APIStatusError):
        with scripted.messages.stream(model="k", max_tokens=5, messages=failing) as stream:
            list(stream)
    assert scripted.messages.create(model="k", max_tokens=100, messages=HELLO).stop_reason == "end_turn"
