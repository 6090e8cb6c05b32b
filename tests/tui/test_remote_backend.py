"""The remote backend against a small fake OpenAI-compatible server, and against kimi-local's real server."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from kimi_local.tui.backend import BackendError
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.remote_backend import RemoteBackend, error_message, normalize_base_url, telemetry_from_metrics
from tests.tui.fake_openai_server import METRICS, FakeServer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
PIECES = ["Hello", ", ", "**world**", " 🙂"]


async def collect(backend, messages=MESSAGES, settings=ChatSettings(temperature=0.2, top_p=0.9, max_tokens=33)):
    async with aclosing(backend.stream_reply(messages, settings)) as chunks:
        return [c async for c in chunks]


def run(coro_fn):
    """Run with a fresh event loop, closing the backend's HTTP client on that loop."""
    return asyncio.run(coro_fn())


def test_urls_are_normalized():
    assert normalize_base_url("http://h:1/") == "http://h:1"
    assert normalize_base_url("http://h:1/v1/") == "http://h:1"
    with pytest.raises(BackendError, match="http://"):
        normalize_base_url("h:1")


def test_streams_a_reply_and_sends_the_settings():
    with FakeServer(PIECES) as server:
        backend = RemoteBackend.connect(server.url + "/v1")
        assert backend.info.model_name == "fake-kimi" and backend.info.max_context == 4096

        async def go():
            try:
                return await collect(backend)
            finally:
                await backend.aclose()

        chunks = run(go)
    assert [c.text for c in chunks if c.text] == PIECES
    assert chunks[-1].finish_reason == "length"
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (17, len(PIECES))
    body = server.requests[0]
    assert body["messages"] == MESSAGES and body["stream"] is True
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 33)
    assert body["stream_options"] == {"include_usage": True} and body["model"] == "fake-kimi"


def test_api_key_is_sent_and_rejection_is_readable():
    with FakeServer(PIECES, api_key="s3cret") as server:
        with pytest.raises(BackendError, match="401: Invalid API key"):
            RemoteBackend.connect(server.url)
        backend = RemoteBackend.connect(server.url, api_key="s3cret")

        async def go():
            try:
                return await collect(backend)
            finally:
                await backend.aclose()

        assert "".join(c.text for c in run(go)) == "".join(PIECES)


def test_server_errors_become_readable_messages():
    with FakeServer(PIECES) as server:
        server.error = (400, {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}})
        backend = RemoteBackend.connect(server.url)

        async def go():
            try:
                return await collect(backend)
            finally:
                await backend.aclose()

        with pytest.raises(BackendError, match="400: max_tokens is too large"):
            run(go)
    assert error_message(500, b"plain failure") == "the server answered 500: plain failure"


def test_unreachable_server_is_a_readable_error():
    with FakeServer(PIECES) as server:
        url = server.url
    with pytest.raises(BackendError, match="cannot reach the server"):
        RemoteBackend.connect(url)


def test_cancelling_closes_the_connection():
    with FakeServer(["x"] * 200, delay=0.02) as server:
        backend = RemoteBackend.connect(server.url)

        async def go():
            got = []

            async def consume():
                async with aclosing(backend.stream_reply(MESSAGES, ChatSettings())) as chunks:
                    async for chunk in chunks:
                        got.append(chunk)

            task = asyncio.create_task(consume())
            while len(got) < 3:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await backend.aclose()
            return got

        got = run(go)
        assert len(got) < 50
        assert server.disconnected.wait(5), "the server did not see the client go away"


def test_telemetry_from_metrics():
    with FakeServer(PIECES) as server:
        backend = RemoteBackend.connect(server.url)

        async def go():
            try:
                return await backend.telemetry()
            finally:
                await backend.aclose()

        t = run(go)
        assert server.metrics_queries == ["/metrics?experts=1"]
    assert t.cache.hit_rate == pytest.approx(0.75)
    assert (t.cache.ram_bytes, t.cache.gpu_bytes) == (2**30, 2048)
    assert t.process_rss_bytes == 4096 and t.running_requests == 1 and t.waiting_requests == 2
    assert t.max_context == 4096
    r = t.routing
    assert r.layer_ids == (1, 2) and r.num_experts == 4 and r.routed_tokens == 12
    assert r.load.tolist() == [[0.75, 0.25, 0.0, 0.0], [0.5, 0.0, 0.0, 0.5]]
    assert r.entropy_bits[1] == pytest.approx(1.0)


def test_metrics_with_the_expert_stores_flat_gauges():
    """The server writes each field of the store's snapshot as `kimi_expert_cache_<field>`."""
    t = telemetry_from_metrics("kimi_expert_cache_hit_rate 0.5\nkimi_expert_cache_ram_resident_bytes 100\n"
                               "kimi_expert_cache_gpu_bytes 7\n")
    assert (t.cache.hit_rate, t.cache.ram_bytes, t.cache.gpu_bytes) == (0.5, 100, 7)


def test_metrics_without_cache_or_routing():
    t = telemetry_from_metrics("kimi_requests_running 0\n")
    assert t.cache is None and t.routing is None and t.running_requests == 0
    assert telemetry_from_metrics(METRICS.replace("kimi_expert_cache_hits 30", "")).cache.hit_rate is None


def test_against_the_real_server(tiny_checkpoint):
    """One loaded model serving both: `kimi-local serve`'s app on loopback, this backend attached by URL."""
    from kimi_local.config import Config, EngineSection
    from kimi_local.engine.loader import load
    from kimi_local.server.app import create_app
    from kimi_local.server.runner import ServerThread, build_state

    config = Config(engine=EngineSection(expert_backend="torch", max_context=512, max_batch=2))
    state = build_state(load(tiny_checkpoint, config), "kimi-tiny")
    try:
        with ServerThread(create_app(state)) as server:
            backend = RemoteBackend.connect(server.url)
            assert backend.info.model_name == "kimi-tiny" and backend.info.max_context == 512

            async def go():
                try:
                    chunks = await collect(backend, settings=ChatSettings(temperature=0.0, max_tokens=12))
                    return chunks, await backend.telemetry()
                finally:
                    await backend.aclose()

            chunks, telemetry = run(go)
            text = "".join(c.text for c in chunks)
            # The same greedy request through the server's own non-streaming path gives the same text.
            import httpx

            reference = httpx.post(f"{server.url}/v1/chat/completions", json={
                "model": "kimi-tiny", "messages": MESSAGES, "temperature": 0.0, "max_tokens": 12}, timeout=30).json()
            assert text == reference["choices"][0]["message"]["content"]
            assert chunks[-1].completion_tokens == reference["usage"]["completion_tokens"]
            assert chunks[-1].finish_reason == reference["choices"][0]["finish_reason"]
            assert telemetry.routing is not None and telemetry.routing.routed_tokens > 0
            deadline = time.monotonic() + 5
            while state.service.engine.num_running and time.monotonic() < deadline:
                time.sleep(0.01)
            assert state.service.engine.num_running == 0
    finally:
        state.close()
