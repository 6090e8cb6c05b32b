"""Shared pieces of the TUI tests: a fast engine configuration for the tiny checkpoint, a scripted backend for
deterministic screens, and helpers to wait for the app and read its screen as text."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace
from typing import AsyncIterator

import numpy as np
import pytest
from rich.console import Console

from kimi_local.config import Config
from kimi_local.engine.routing_stats import RoutingSnapshot, entropy_bits
from kimi_local.tui.backend import BackendInfo, ChatBackend, ReplyChunk
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.telemetry import CacheTelemetry, Telemetry

SIZE = (100, 30)


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    """The torch expert backend (no JIT warm-up) and a short context: replies come in milliseconds."""
    config = Config()
    return replace(config, engine=replace(config.engine, expert_backend="torch", max_context=512, max_batch=2,
                                          device="cpu", dtype="float32"))


async def wait_until(pilot, predicate, timeout: float = 20.0, step: float = 0.02) -> None:
    """Let the app run until `predicate()` holds; fail the test with a clear message after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s: {getattr(predicate, '__doc__', '')}")
        await pilot.pause(step)


def screen_text(app) -> str:
    """The current screen as plain text, as the terminal shows it (same compositor output as a screenshot)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system="truecolor",
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text(styles=False).splitlines())


def fixed_routing() -> RoutingSnapshot:
    """A deterministic load: layer i favours experts near 4*i."""
    layers, experts = 5, 64
    load = np.zeros((layers, experts))
    for i in range(layers):
        load[i] = np.exp(-0.5 * ((np.arange(experts) - 4 * i * 3) / 3.0) ** 2) + 0.01
    load /= load.sum(axis=1, keepdims=True)
    return RoutingSnapshot(tuple(range(1, layers + 1)), experts, load, entropy_bits(load), 100, 0.75)


FIXED_TELEMETRY = Telemetry(
    process_rss_bytes=3 * 2**30, free_ram_bytes=17 * 2**30, has_gpu=False,
    cache=CacheTelemetry(hit_rate=0.875, ram_bytes=12 * 2**30, gpu_bytes=None),
    routing=fixed_routing(), max_context=8192, running_requests=1, waiting_requests=0,
)


class ScriptedBackend(ChatBackend):
    """Replies with fixed chunks (optionally paced) and fixed telemetry; records what it was asked."""

    def __init__(self, chunks: list[str], telemetry: Telemetry = FIXED_TELEMETRY, delay: float = 0.0,
                 is_demo: bool = False, prompt_tokens: int = 42):
        self.info = BackendInfo("scripted-model", "/models/scripted", is_demo=is_demo, max_context=8192)
        self.chunks = chunks
        self.fixed_telemetry = telemetry
        self.delay = delay
        self.prompt_tokens = prompt_tokens
        self.requests: list[tuple[list[dict], ChatSettings]] = []
        self.cancelled = 0
        self.closed = False

    async def stream_reply(self, messages, settings) -> AsyncIterator[ReplyChunk]:
        self.requests.append((messages, settings))
        yield ReplyChunk(prompt_tokens=self.prompt_tokens)
        try:
            for text in self.chunks:
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield ReplyChunk(text, 1)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        yield ReplyChunk(finish_reason="stop", prompt_tokens=self.prompt_tokens, completion_tokens=len(self.chunks))

    async def telemetry(self) -> Telemetry:
        return self.fixed_telemetry

    def close(self) -> None:
        self.closed = True
