"""Refusals in OpenAI's error shape: API key, malformed JSON, bad parameters, context overflow, a full queue,
and an engine failure that fails one request while the server keeps serving."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from kimi_local.engine.sampling import SamplingParams
from kimi_local.engine.service import QueueFullError
from kimi_local.server.app import create_app
from kimi_local.server.runner import ServerThread
from kimi_local.server.state import ServerState
from tests.server.conftest import MAX_CONTEXT
from tests.server.scripted_model import FAIL_MARKER

MESSAGES = [{"role": "user", "content": "Hi"}]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def wait_idle(engine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.num_running or engine.num_waiting:
        assert time.monotonic() < deadline, "the engine did not drain"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def keyed_server(real_server):
    """A second app over the same engine service, requiring an API key."""
    s = real_server.state
    state = ServerState(s.service, s.tokenizer, s.chat_format, s.model_name, api_key="s3cret", metrics=s.metrics)
    with ServerThread(create_app(state)) as thread:
        yield thread.url


def test_api_key_is_required_when_configured(keyed_server):
    bad = openai.OpenAI(base_url=keyed_server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)
    assert_openai_error(httpx.get(keyed_server + "/v1/models"), 401)
    assert_openai_error(httpx.get(keyed_server + "/metrics"), 401)
    assert httpx.get(keyed_server + "/health").status_code == 200  # health stays open
    good = openai.OpenAI(base_url=keyed_server + "/v1", api_key="s3cret", max_retries=0)
    assert good.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1).choices
    r = httpx.get(keyed_server + "/v1/models", headers={"x-api-key": "s3cret"})
    assert r.status_code == 200


def test_no_key_needed_without_one(real_server):
    assert httpx.get(real_server.url + "/v1/models").status_code == 200


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b"\xff\xfe"])
def test_malformed_json(real_server, body):
    r = httpx.post(real_server.url + "/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"})
    error = assert_openai_error(r, 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("patch, param", [
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"stop": ["", "x"]}, "stop"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
])
def test_bad_parameters(real_server, patch, param):
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 1, **patch}
    error = assert_openai_error(httpx.post(real_server.url + "/v1/chat/completions", json=body), 400)
    assert error["param"] == param or (error["param"] or "").startswith(param + "."), error


def test_missing_required_field(real_server):
    error = assert_openai_error(httpx.post(real_server.url + "/v1/chat/completions", json={"model": "m"}), 400,
                                "messages")
    assert "required" in error["message"]
    assert_openai_error(httpx.post(real_server.url + "/v1/completions", json={"model": "m"}), 400, "prompt")


def test_client_raises_bad_request(real_server):
    client = openai.OpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES, temperature=-1)
    assert info.value.body["param"] == "temperature"


def test_unknown_route_and_method(real_server):
    assert_openai_error(httpx.get(real_server.url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(real_server.url + "/v1/chat/completions"), 405)


def test_context_overflow_names_the_limit(real_server):
    long_text = "alpha beta gamma delta " * 400
    r = httpx.post(real_server.url + "/v1/chat/completions",
                   json={"model": "m", "messages": [{"role": "user", "content": long_text}]})
    error = assert_openai_error(r, 400, "messages")
    assert error["code"] == "context_length_exceeded"
    assert str(MAX_CONTEXT) in error["message"]
    r = httpx.post(real_server.url + "/v1/completions", json={"model": "m", "prompt": long_text})
    assert assert_openai_error(r, 400, "prompt")["code"] == "context_length_exceeded"


def test_token_ids_outside_the_vocabulary(real_server):
    r = httpx.post(real_server.url + "/v1/completions", json={"model": "m", "prompt": [1, 2, 10**6]})
    assert "outside the vocabulary" in assert_openai_error(r, 400, "prompt")["message"]


def test_full_queue_answers_429(scripted_server):
    service = scripted_server.state.service
    engine = scripted_server.engine
    params = SamplingParams(max_new_tokens=10_000, temperature=0)  # no stop ids: runs to the end of the context
    held = []
    model = engine.model
    model.step_delay = 0.2  # slow steps: nothing finishes while the test runs
    try:
        # Fill every KV slot and the whole waiting queue with requests that run until cancelled.
        prompt = scripted_server.state.chat_format.encode_messages(MESSAGES)
        deadline = time.monotonic() + 10
        while engine.num_running < engine.max_batch or engine.num_waiting < service.max_queue:
            assert time.monotonic() < deadline, "the queue did not fill"
            try:
                held.append(service.submit(prompt, params))
            except QueueFullError:
                time.sleep(0.01)
        r = httpx.post(scripted_server.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        error = assert_openai_error(r, 429)
        assert error["type"] == "rate_limit_error" and r.headers.get("retry-after")
        client = openai.OpenAI(base_url=scripted_server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=MESSAGES)
    finally:
        model.step_delay = 0.0
        for stream in held:
            stream.close()
        wait_idle(engine)


def test_engine_failure_fails_only_that_request(scripted_server):
    client = openai.OpenAI(base_url=scripted_server.url + "/v1", api_key="x", max_retries=0)
    failing = [{"role": "user", "content": f"{FAIL_MARKER} now"}]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=failing)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="m", messages=failing, stream=True))
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].finish_reason == "stop"


def test_an_unexpected_exception_is_a_500_for_that_request_only(real_server):
    s = real_server.state
    state = ServerState(s.service, s.tokenizer, s.chat_format, s.model_name, metrics=s.metrics)
    app = create_app(state)

    class Broken:
        async def create(self, request):
            raise KeyError("bug")

    app.state.completions = Broken()
    with ServerThread(app) as thread:
        r = httpx.post(thread.url + "/v1/completions", json={"model": "m", "prompt": "x"})
        assert assert_openai_error(r, 500)["code"] == "internal_error"
        assert httpx.post(thread.url + "/v1/chat/completions",
                          json={"model": "m", "messages": MESSAGES, "max_tokens": 1}).status_code == 200
