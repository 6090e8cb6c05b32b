"""Running one API request on the engine: n engine requests, one merged stream of choice events.

An API request with `n` choices becomes `n` engine requests submitted together, so the engine decodes them in
the same batch. Their outputs arrive on the event loop (`EngineService` streams, the forward passes stay on
the engine thread) and are merged into one sequence of `ChoiceEvent`s in arrival order.

The run ends early, freeing every KV slot at once, when:
- the client disconnects (a watcher waits for the ASGI `http.disconnect` message; a request still waiting
  in the queue is dropped, a running one aborted at the next engine step);
- a choice matches a stop string (only that choice's engine request is cancelled);
- the consumer stops reading (the generator is closed: `aclosing` in the callers).
Submission errors become API errors: a full queue is a 429, a prompt too long for the context a 400.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import suppress

from starlette.requests import Request

from kimi_local.engine.engine import ContextLengthError
from kimi_local.engine.sampling import SamplingParams
from kimi_local.engine.service import EngineService, QueueFullError, RequestStream
from kimi_local.text.choice_text import ChoiceEvent, ChoiceText
from kimi_local.server.errors import ApiError

log = logging.getLogger(__name__)

_DISCONNECTED = object()


def submit_all(service: EngineService, prompts: list[list[int]], params: list[SamplingParams],
               prompt_param: str) -> list[RequestStream]:
    """Queue every choice (prompt i with params i) or none: on failure the ones already queued are cancelled."""
    loop = asyncio.get_running_loop()
    streams: list[RequestStream] = []
    try:
        for prompt_ids, p in zip(prompts, params, strict=True):
            streams.append(service.submit(prompt_ids, p, loop=loop))
    except QueueFullError as exc:
        close_streams(streams)
        raise ApiError(429, f"the server is busy: {exc}", code="queue_full") from None
    except ContextLengthError as exc:
        close_streams(streams)
        raise ApiError(400, f"This model's maximum context length is {service.engine.max_context} tokens; {exc}",
                       param=prompt_param, code="context_length_exceeded") from None
    except ValueError as exc:
        close_streams(streams)
        raise ApiError(400, str(exc), param=prompt_param) from None
    except RuntimeError as exc:  # the service is shutting down
        close_streams(streams)
        raise ApiError(503, str(exc), code="unavailable") from None
    return streams


def close_streams(streams: list[RequestStream]) -> None:
    """Cancel whatever is still running (idempotent)."""
    for stream in streams:
        stream.close()


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client has gone (the request body must already have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_choices(request: Request, streams: list[RequestStream], texts: list[ChoiceText],
                      heartbeat: float | None = None) -> AsyncIterator[ChoiceEvent | None]:
    """Merged events of all choices until each has finished. Stops silently if the client disconnects
    (`request.state.disconnected` is then True). With `heartbeat`, yields None after that many seconds
    without output (a queued request, a long prefill), so a stream can send keep-alive events."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        async for out in stream:
            queue.put_nowait((index, out))

    async def watch() -> None:
        await wait_for_disconnect(request)
        queue.put_nowait(_DISCONNECTED)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    watcher = asyncio.create_task(watch())
    request.state.disconnected = False
    try:
        remaining = len(streams)
        while remaining:
            if heartbeat is None:
                item = await queue.get()
            else:
                try:
                    item = await asyncio.wait_for(queue.get(), heartbeat)
                except asyncio.TimeoutError:
                    yield None
                    continue
            if item is _DISCONNECTED:
                request.state.disconnected = True
                log.info("client disconnected; cancelling %d engine request(s)", remaining)
                return
            index, out = item
            text = texts[index]
            if text.is_finished:
                continue
            event = text.feed(out)
            if event.is_final:
                remaining -= 1
                if out.finish_reason is None:  # a stop string ended it before the engine did
                    streams[index].close()
            yield event
    finally:
        close_streams(streams)
        for task in [*tasks, watcher]:
            task.cancel()
        for task in [*tasks, watcher]:
            with suppress(asyncio.CancelledError, Exception):
                await task

