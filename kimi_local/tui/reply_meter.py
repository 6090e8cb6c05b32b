"""Speed of one reply as the person sees it: time to first token, prompt and generation tokens per second.

Measured on the receiving side from the chunk stream, so the figures mean the same for a local engine and a
remote server (they include queueing and, remotely, the network). Prompt speed is prompt tokens over the time
to the first token (prefill dominates it); generation speed counts the tokens after the first one over the
time since the first one, so a slow prefill does not drag the decode rate down.
"""

from __future__ import annotations

import time
from typing import Callable

from kimi_local.tui.backend import ReplyChunk


class ReplyMeter:
    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self.start_time = clock()
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.generated_tokens = 0
        self.prompt_tokens: int | None = None
        self.cached_prompt_tokens = 0
        self.finish_reason: str | None = None

    def observe(self, chunk: ReplyChunk) -> None:
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.cached_prompt_tokens is not None:
            self.cached_prompt_tokens = chunk.cached_prompt_tokens
        if chunk.num_tokens:
            now = self._clock()
            if self.first_token_time is None:
                self.first_token_time = now
            self.last_token_time = now
            self.generated_tokens += chunk.num_tokens
        if chunk.completion_tokens is not None:  # the backend's own count is authoritative
            self.generated_tokens = chunk.completion_tokens
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.start_time

    @property
    def prompt_tokens_per_second(self) -> float | None:
        """Prompt tokens computed per second until the first token (reused prefix tokens cost nothing)."""
        ttft = self.time_to_first_token
        computed = (self.prompt_tokens or 0) - self.cached_prompt_tokens
        if ttft is None or computed <= 0 or ttft <= 0:
            return None
        return computed / ttft

    @property
    def generation_tokens_per_second(self) -> float | None:
        if self.first_token_time is None or self.last_token_time is None or self.generated_tokens < 2:
            return None
        span = self.last_token_time - self.first_token_time
        return (self.generated_tokens - 1) / span if span > 0 else None

    @property
    def context_tokens(self) -> int | None:
        """Tokens the conversation occupies in the context: the prompt plus what has been generated."""
        return None if self.prompt_tokens is None else self.prompt_tokens + self.generated_tokens
