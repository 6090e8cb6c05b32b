"""What the chat app needs from a model, whether it runs in this process or behind `kimi-local serve`.

A `ChatBackend` turns a conversation (OpenAI-style messages) plus generation settings into a stream of
`ReplyChunk`s, and reports what the machine is doing as a `Telemetry` snapshot. Two implementations:
`LocalBackend` (the engine service in this process, the same token stream the server uses) and
`RemoteBackend` (the OpenAI-compatible HTTP API of a running server, so one loaded model serves both).

The stream is an async iterator consumed on the app's event loop. Stopping a reply means cancelling the task
that iterates it: the backend must then free the request at once (close the engine stream / the HTTP response).
Failures the user can act on (prompt too long, queue full, server unreachable) raise `BackendError` with a
readable message; the app shows it and keeps running.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import AsyncIterator

from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.telemetry import Telemetry


class BackendError(RuntimeError):
    """A reply could not be produced; the message is meant for the user."""


@dataclass(frozen=True)
class ReplyChunk:
    """A piece of a streamed reply. The last chunk has a `finish_reason` (and usage, when known)."""

    text: str = ""
    num_tokens: int = 0  # generated tokens this chunk stands for
    finish_reason: str | None = None  # "stop", "length", ...
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_prompt_tokens: int | None = None  # of prompt_tokens, those the engine reused instead of computing


@dataclass(frozen=True)
class BackendInfo:
    """How the header describes the model."""

    model_name: str
    location: str  # a directory or a URL
    is_demo: bool = False
    max_context: int | None = None


class ChatBackend(abc.ABC):
    info: BackendInfo

    @abc.abstractmethod
    def stream_reply(self, messages: list[dict], settings: ChatSettings) -> AsyncIterator[ReplyChunk]:
        """The assistant's reply to `messages`, streamed (an async generator)."""

    @abc.abstractmethod
    async def telemetry(self) -> Telemetry:
        """What the machine is doing now (cheap; called about twice a second)."""

    def close(self) -> None:
        """Release the model or the connection."""

    async def aclose(self) -> None:
        """`close()` from the event loop (called once, when the app exits)."""
        self.close()
