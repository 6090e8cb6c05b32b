"""The chat backend for a model loaded in this process.

It goes through the same `EngineService` token stream as the server: the conversation is rendered and encoded
by the checkpoint's chat format (only the template's markers become control tokens), submitted with the
app's event loop so outputs arrive with `async for`, and the generated ids are turned into text by the
same `ChoiceText` the server uses (never half a UTF-8 character; stop ids such as <|im_end|> end the reply
and are not shown). Cancelling the consuming task closes the engine stream, which aborts the request and frees
its KV slot at the next engine step.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

from kimi_local.engine.engine import ContextLengthError
from kimi_local.engine.routing_stats import RoutingStats
from kimi_local.engine.service import EngineService, QueueFullError
from kimi_local.text.choice_text import ChoiceText
from kimi_local.tui.backend import BackendError, BackendInfo, ChatBackend, ReplyChunk
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.telemetry import Telemetry, gpu_probe, memory_probe, read_cache_stats

log = logging.getLogger(__name__)


class LocalBackend(ChatBackend):
    def __init__(self, service: EngineService, chat_format, info: BackendInfo, routing: RoutingStats | None = None,
                 experts: Any = None, on_close: Any = None):
        """`chat_format`: a `kimi_local.text.chat.ChatFormat` (its `tokenizer` detokenizes).
        `experts`: the routed-expert backend, read for cache statistics. `on_close`: called after the service
        stops (e.g. to detach the routing observer)."""
        self.service = service
        self.chat_format = chat_format
        self.tokenizer = chat_format.tokenizer
        self.info = info
        self.routing = routing
        self.experts = experts
        self._on_close = on_close
        self._stop_ids = frozenset(self.tokenizer.stop_ids)

    async def stream_reply(self, messages: list[dict], settings: ChatSettings) -> AsyncIterator[ReplyChunk]:
        try:
            prompt_ids = self.chat_format.encode_messages(messages)
        except ValueError as exc:
            raise BackendError(f"cannot build the prompt: {exc}") from exc
        params = settings.sampling_params(stop_ids=self._stop_ids)
        try:
            stream = self.service.submit(prompt_ids, params, loop=asyncio.get_running_loop())
        except ContextLengthError as exc:
            raise BackendError(f"the conversation is too long for the context: {exc}") from exc
        except QueueFullError as exc:
            raise BackendError(f"the engine is busy: {exc}") from exc
        except (ValueError, RuntimeError) as exc:
            raise BackendError(str(exc)) from exc
        yield ReplyChunk(prompt_tokens=len(prompt_ids))
        text = ChoiceText(0, self.tokenizer, self._stop_ids, [])
        try:
            async for out in stream:
                event = text.feed(out)
                if event.error:
                    raise BackendError(f"generation failed: {event.error}")
                num_tokens = 1 if out.token_id is not None else 0
                if event.is_final:
                    yield ReplyChunk(event.text, num_tokens, event.finish_reason, len(prompt_ids), text.num_tokens,
                                     out.cached_prompt_tokens)
                    return
                yield ReplyChunk(event.text, num_tokens, cached_prompt_tokens=out.cached_prompt_tokens)
        finally:
            stream.close()  # no-op when finished; aborts the request when the consumer stopped early

    async def telemetry(self) -> Telemetry:
        rss, free = memory_probe()
        has_gpu, gpu_used, gpu_total = gpu_probe()
        stats = self.service.stats()
        return Telemetry(
            process_rss_bytes=rss, free_ram_bytes=free, has_gpu=has_gpu, gpu_used_bytes=gpu_used,
            gpu_total_bytes=gpu_total, cache=read_cache_stats(self.experts),
            routing=self.routing.snapshot() if self.routing is not None else None,
            max_context=self.info.max_context, running_requests=stats.running, waiting_requests=stats.waiting,
        )

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)  # joins the engine thread after its current step

    def close(self) -> None:
        self.service.close()
        if self._on_close is not None:
            self._on_close()
