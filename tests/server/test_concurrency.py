"""Concurrency: many streaming clients at once share decode steps (real tiny model), and a client that goes
away frees its KV slot at once, whether streaming, waiting for a non-streamed reply, or still queued (scripted
model with a reply that never ends by itself and slowed steps, so only the disconnect can free the slot)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.server.conftest import LONG_STORY, SCRIPTED_BATCH

MESSAGES = [{"role": "user", "content": LONG_STORY}]
STEP_DELAY = 0.01  # 400 tokens take at least 4 s; a freed slot must show within 2 s


def wait_until(predicate, timeout: float) -> float:
    """Seconds until `predicate()` held; fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.005)
    return time.monotonic() - start


def idle(engine) -> bool:
    return engine.num_running == 0 and engine.num_waiting == 0


@pytest.fixture
def engine(real_server):
    wait_until(lambda: idle(real_server.engine), 10)
    return real_server.engine


@pytest.fixture
def slow(scripted_server):
    engine = scripted_server.engine
    wait_until(lambda: idle(engine), 10)
    engine.model.step_delay = STEP_DELAY
    yield scripted_server
    engine.model.step_delay = 0.0


def test_sixteen_concurrent_streaming_clients_all_complete(real_server, engine):
    client = openai.AsyncOpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    steps_before = engine.stats.decode_steps
    tokens_before = engine.stats.generated_tokens

    async def one(i: int):
        chunks = []
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"Client {i} says hello."}], max_tokens=6,
            temperature=1.0, seed=i, stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            chunks.append(chunk)
        return chunks

    async def main():
        try:
            return await asyncio.gather(*(one(i) for i in range(16)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert len(results) == 16
    for chunks in results:
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(reasons) == 1 and reasons[0] in ("stop", "length")
        assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 6
    generated = engine.stats.generated_tokens - tokens_before
    decode_steps = engine.stats.decode_steps - steps_before
    # Continuous batching: decode steps served several requests each (16 requests, 8 slots).
    assert decode_steps < generated - 16
    assert idle(engine)


def test_disconnect_mid_stream_frees_the_slot(slow):
    engine = slow.engine
    client = openai.OpenAI(base_url=slow.url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=400, temperature=0,
                                            stream=True)
    received = 0
    for _ in stream:
        received += 1
        if received == 3:
            break
    assert engine.num_running == 1
    stream.close()
    assert wait_until(lambda: idle(engine), timeout=2.0) < 2.0


def test_disconnect_during_non_stream_request_frees_the_slot(slow):
    engine = slow.engine
    generated = engine.stats.generated_tokens
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(slow.url + "/v1/chat/completions", timeout=httpx.Timeout(5.0, read=0.5),
                   json={"model": "m", "messages": MESSAGES, "max_tokens": 400, "temperature": 0})
    wait_until(lambda: idle(engine), timeout=2.0)
    assert 0 < engine.stats.generated_tokens - generated < 300


def test_disconnect_while_queued_drops_the_request(slow):
    """Fill every slot with long requests; a queued client that leaves is dropped from the queue."""
    engine = slow.engine
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 400, "temperature": 0, "stream": True}

    async def main():
        async with httpx.AsyncClient(base_url=slow.url, timeout=60) as http:
            holders = []
            for _ in range(SCRIPTED_BATCH):
                holders.append(await http.send(http.build_request("POST", "/v1/chat/completions", json=body),
                                               stream=True))
            await asyncio.to_thread(wait_until, lambda: engine.num_running == SCRIPTED_BATCH, 10)
            queued = asyncio.create_task(http.post("/v1/chat/completions", json={**body, "stream": False}))
            await asyncio.to_thread(wait_until, lambda: engine.num_waiting == 1, 10)
            queued.cancel()  # the client gives up while waiting
            await asyncio.to_thread(wait_until, lambda: engine.num_waiting == 0, 2)
            assert engine.num_running == SCRIPTED_BATCH
            for response in holders:
                await response.aclose()
            await asyncio.to_thread(wait_until, lambda: idle(engine), 2)

    asyncio.run(main())
