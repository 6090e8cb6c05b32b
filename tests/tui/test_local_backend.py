"""The local backend on the tiny checkpoint: the exact text the model generates, progress while opening,
stopping mid-reply frees the engine, readable errors, and live telemetry."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from kimi_local.engine.loader import load
from kimi_local.engine.sampling import SamplingParams
from kimi_local.text.chat import ChatFormat
from kimi_local.tui.backend import BackendError
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.local_backend import LocalBackend
from kimi_local.tui.opening import open_local

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a mixture of experts?"}]


@pytest.fixture(scope="module")
def backend(tiny_checkpoint, tiny_config):
    steps = []
    b = open_local(str(tiny_checkpoint), tiny_config)(lambda stage, done, total: steps.append((stage, done, total)))
    b.progress_steps = steps
    yield b
    b.close()


async def collect(backend: LocalBackend, messages, settings):
    async with aclosing(backend.stream_reply(messages, settings)) as chunks:
        return [c async for c in chunks]


def test_opening_reports_layer_progress(backend, tiny_checkpoint):
    layers = [(done, total) for stage, done, total in backend.progress_steps if stage == "loading layers" and total]
    assert layers[-1] == (3, 3) and [d for d, _ in layers] == sorted(d for d, _ in layers)
    assert backend.info.location == str(tiny_checkpoint) and not backend.info.is_demo
    assert backend.info.max_context == 512


def test_reply_text_is_exactly_the_models_output(backend, tiny_checkpoint, tiny_config):
    settings = ChatSettings(temperature=0.0, max_tokens=24)
    chunks = asyncio.run(collect(backend, MESSAGES, settings))
    # Reference: the same prompt ids through a separately loaded engine, greedily, decoded in one go.
    chat_format = ChatFormat.from_dir(tiny_checkpoint)
    prompt_ids = chat_format.encode_messages(MESSAGES)
    tokenizer = chat_format.tokenizer
    params = SamplingParams(temperature=0.0, max_new_tokens=24, stop_ids=frozenset(tokenizer.stop_ids))
    ids = list(load(tiny_checkpoint, tiny_config).engine.generate(prompt_ids, params))
    shown = [i for i in ids if i not in tokenizer.stop_ids]
    assert "".join(c.text for c in chunks) == tokenizer.decode(shown, skip_special=True)
    assert chunks[0].prompt_tokens == len(prompt_ids) and chunks[0].num_tokens == 0
    last = chunks[-1]
    assert last.finish_reason == ("stop" if ids[-1] in tokenizer.stop_ids else "length")
    assert (last.prompt_tokens, last.completion_tokens) == (len(prompt_ids), len(ids))
    assert sum(c.num_tokens for c in chunks) == len(ids)


def test_reply_text_comes_from_the_servers_choice_text(backend, monkeypatch):
    """One mechanism turns engine outputs into text for every front end (stop ids hidden, UTF-8 never split,
    the final flush): the TUI's chunks are exactly ChoiceText's events."""
    from kimi_local.tui import local_backend

    made = []

    class Recording(local_backend.ChoiceText):
        def __init__(self, *args):
            super().__init__(*args)
            self.events = []
            made.append(self)

        def feed(self, out):
            self.events.append(super().feed(out))
            return self.events[-1]

    monkeypatch.setattr(local_backend, "ChoiceText", Recording)
    chunks = asyncio.run(collect(backend, MESSAGES, ChatSettings(temperature=0.0, max_tokens=12)))
    (text,) = made
    assert text.stop_ids == frozenset(backend.tokenizer.stop_ids)
    assert [c.text for c in chunks[1:]] == [e.text for e in text.events]
    assert chunks[-1].finish_reason == text.events[-1].finish_reason and chunks[-1].completion_tokens == text.num_tokens


def test_stopping_mid_reply_aborts_the_request(backend):
    engine = backend.service.engine

    async def run():
        seen = []

        async def consume():
            async with aclosing(backend.stream_reply(MESSAGES, ChatSettings(temperature=1.0, max_tokens=400))) as s:
                async for chunk in s:
                    seen.append(chunk)
                    if len(seen) == 4:
                        return  # the consumer walks away after 3 tokens

        await consume()
        deadline = time.monotonic() + 5
        while engine.num_running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return seen

    before = backend.service.stats().finished_requests
    seen = asyncio.run(run())
    assert len(seen) == 4
    assert engine.num_running == 0 and engine.num_waiting == 0
    assert backend.service.stats().finished_requests == before + 1


def test_cancelling_the_task_aborts_the_request(backend):
    engine = backend.service.engine

    async def run():
        started = asyncio.Event()

        async def consume():
            async with aclosing(backend.stream_reply(MESSAGES, ChatSettings(max_tokens=400))) as s:
                async for chunk in s:
                    if chunk.num_tokens:
                        started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 5
        while engine.num_running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert engine.num_running == 0


def test_a_prompt_longer_than_the_context_is_a_readable_error(backend):
    long = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(BackendError, match="too long for the context"):
        asyncio.run(collect(backend, long, ChatSettings()))
    with pytest.raises(BackendError, match="cannot build the prompt"):
        asyncio.run(collect(backend, [{"role": "robot", "content": "x"}], ChatSettings()))


def test_telemetry_reports_routing_and_memory(backend):
    asyncio.run(collect(backend, MESSAGES, ChatSettings(temperature=0.0, max_tokens=4)))
    t = asyncio.run(backend.telemetry())
    assert t.routing is not None and t.routing.routed_tokens > 0
    assert t.routing.load.shape == (2, 16)  # tiny: layers 1 and 2 are MoE, 16 experts
    assert t.process_rss_bytes > 0 and t.free_ram_bytes > 0
    assert t.max_context == 512 and t.running_requests == 0
    assert t.cache is not None and 0 <= t.cache.hit_rate <= 1  # from the expert store the loader builds
    assert 0 < t.cache.ram_bytes <= t.cache.ram_budget_bytes


def test_the_next_turn_reuses_the_conversation_so_far(backend, tiny_checkpoint):
    settings = ChatSettings(temperature=0.0, max_tokens=6)
    first = asyncio.run(collect(backend, MESSAGES, settings))
    reply = "".join(c.text for c in first)
    follow_up = MESSAGES + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Shorter?"}]
    second = asyncio.run(collect(backend, follow_up, settings))
    cached = [c.cached_prompt_tokens for c in second if c.cached_prompt_tokens is not None]
    first_prompt = ChatFormat.from_dir(tiny_checkpoint).encode_messages(MESSAGES)
    # at least the first turn's prompt is already in a slot (the reply's own tokens may re-encode differently)
    assert len(cached) == 1 and len(first_prompt) - 1 <= cached[0] < second[0].prompt_tokens
