"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages API on the same engine.

The conversation is translated to OpenAI-style messages (`anthropic_messages`) and rendered by the same prompt
path as /v1/chat/completions, so both APIs give the model identical prompts. The reply is read by the same
tool-call parser: text becomes `text` blocks, Kimi's tool calls become `tool_use` blocks (ids kept, `input`
the parsed arguments). Stop reasons: end_turn (end-of-turn token), stop_sequence, max_tokens, tool_use.

A conversation that ends with an assistant turn is continued from there (prefill), not answered anew.

Temperature follows Moonshot's own Anthropic-compatible endpoint: the requested value (Anthropic's 0..1
scale, default 1) is multiplied by 0.6, so a client's default lands on Kimi's recommended 0.6.

Streaming sends Anthropic's event sequence: message_start, ping, then per content block content_block_start,
its deltas (text_delta, or input_json_delta with argument fragments as they are generated) and
content_block_stop, then message_delta (stop reason, usage) and message_stop. A ping is also sent
whenever nothing happened for PING_SECONDS (queued, long prefill). Errors after the start are an `error` event.

Usage follows Anthropic's split of the prompt (`Usage`): prompt tokens whose KV rows a slot still held (an
earlier turn of the same conversation) are `cache_read_input_tokens`, the rest `input_tokens`. How many is known
only once the engine has scheduled the request, after message_start: message_start counts the whole prompt as
`input_tokens` (0 read), and message_delta carries the final counts (Anthropic's delta usage is cumulative: it
replaces message_start's, as the `anthropic` client's stream accumulator does).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from kimi_local.server.anthropic_messages import to_openai_messages, to_openai_tool_choice, to_openai_tools
from kimi_local.server.anthropic_protocol import (
    CountTokensRequest, Message, MessagesRequest, PromptFields, TextBlock, TokenCount, ToolUseBlock, Usage,
)
from kimi_local.server.chat_prompt import ChatPrompt, build_chat_prompt
from kimi_local.text.choice_text import ChoiceEvent, ChoiceText
from kimi_local.server.errors import engine_failure
from kimi_local.server.generation import close_streams, run_choices, submit_all
from kimi_local.server.reply import Reply
from kimi_local.server.serving_chat import CLIENT_GONE
from kimi_local.server.serving_common import SSE_HEADERS, new_id, read_request, sampling_params, sse
from kimi_local.server.state import ServerState
from kimi_local.text.tool_calls import ContentDelta, ToolCall, ToolCallDelta, ToolCallDone

log = logging.getLogger(__name__)

TEMPERATURE_SCALE = 0.6  # Moonshot's mapping for Kimi behind the Anthropic API
PING_SECONDS = 10.0


def _prompt(state: ServerState, req: PromptFields) -> ChatPrompt:
    """A final assistant turn is a prefill: the reply continues it (as Anthropic's API does)."""
    prefill = req.messages[-1].role == "assistant"
    return build_chat_prompt(state.chat_format, to_openai_messages(req), to_openai_tools(req.tools),
                             to_openai_tool_choice(req.tool_choice), continue_final=prefill)


def stop_reason(event: ChoiceEvent, reply: Reply) -> str:
    if event.stop_string is not None:
        return "stop_sequence"
    if event.finish_reason == "length":
        return "max_tokens"
    return "tool_use" if reply.tool_calls else "end_turn"


def tool_input(call: ToolCall) -> dict[str, Any]:
    """The parsed arguments, whenever they parse (a call cut off after them only lacks its end marker); a call
    whose arguments do not parse (logged) gets an empty input rather than failing the reply."""
    value = call.arguments_object()
    if value is None:
        log.warning("tool call %s is malformed (%s); sending it with empty input", call.id, call.error)
        return {}
    return value


class MessagesServing:
    def __init__(self, state: ServerState):
        self.state = state

    async def count_tokens(self, request: Request) -> Response:
        req = await read_request(request, CountTokensRequest)
        prompt = await asyncio.to_thread(_prompt, self.state, req)
        return JSONResponse(TokenCount(input_tokens=len(prompt.prompt_ids)).to_dict())

    async def create(self, request: Request) -> Response:
        req = await read_request(request, MessagesRequest)
        state = self.state
        prompt = await asyncio.to_thread(_prompt, state, req)
        temperature = TEMPERATURE_SCALE * (1.0 if req.temperature is None else req.temperature)
        params = sampling_params(1, len(prompt.prompt_ids), state.max_context, state.stop_ids,
                                 temperature=temperature, top_p=req.top_p, top_k=req.top_k,
                                 max_tokens=req.max_tokens, seed=None, logprobs=None)
        streams = submit_all(state.service, [prompt.prompt_ids], params, "messages")
        run = _Run(state, req, request, prompt, ChoiceText(0, state.tokenizer, state.stop_ids,
                                                           req.stop_sequences or []))
        if req.stream:
            return StreamingResponse(run.stream(streams), media_type="text/event-stream", headers=SSE_HEADERS,
                                     background=BackgroundTask(close_streams, streams))
        return await run.collect(streams)


class _Run:
    def __init__(self, state: ServerState, req: MessagesRequest, request: Request, prompt: ChatPrompt,
                 text: ChoiceText):
        self.state, self.req, self.request, self.prompt, self.text = state, req, request, prompt, text
        self.reply = Reply(prompt.parse_tools, prompt.forced_text)
        self.id = new_id("msg_")

    def _usage(self) -> Usage:
        return Usage.of(len(self.prompt.prompt_ids), self.text.cached_prompt_tokens, self.text.num_tokens)

    def _items(self, event: ChoiceEvent):
        items = self.reply.feed(event.text)
        return items + self.reply.finish() if event.is_final else items

    async def collect(self, streams) -> Response:
        final: ChoiceEvent | None = None
        async with aclosing(run_choices(self.request, streams, [self.text])) as events:
            async for event in events:
                if event.finish_reason == "error":
                    raise engine_failure(event.error)
                self._items(event)
                if event.is_final:
                    final = event
        if self.request.state.disconnected or final is None:
            return Response(status_code=CLIENT_GONE)
        content: list[TextBlock | ToolUseBlock] = []
        if self.reply.text:
            content.append(TextBlock(text=self.reply.text))
        content += [ToolUseBlock(id=c.id, name=c.name, input=tool_input(c)) for c in self.reply.tool_calls]
        message = Message(id=self.id, model=self.state.model_name, content=content,
                          stop_reason=stop_reason(final, self.reply), stop_sequence=final.stop_string,
                          usage=self._usage())
        return JSONResponse(message.to_dict())

    async def stream(self, streams):
        start = Message(id=self.id, model=self.state.model_name, content=[],
                        usage=Usage.of(len(self.prompt.prompt_ids), 0, 0))  # reuse not decided yet
        yield sse({"type": "message_start", "message": start.to_dict()}, "message_start")
        yield sse({"type": "ping"}, "ping")
        blocks = _Blocks()
        async with aclosing(run_choices(self.request, streams, [self.text], heartbeat=PING_SECONDS)) as events:
            async for event in events:
                if event is None:
                    yield sse({"type": "ping"}, "ping")
                    continue
                if event.finish_reason == "error":
                    error = engine_failure(event.error)
                    yield sse(error.anthropic_body(), "error")
                    return
                for item in self._items(event):
                    for frame in blocks.frames(item):
                        yield frame
                if event.is_final:
                    for frame in blocks.close():
                        yield frame
                    delta = {"stop_reason": stop_reason(event, self.reply), "stop_sequence": event.stop_string}
                    yield sse({"type": "message_delta", "delta": delta, "usage": self._usage().to_dict()},
                              "message_delta")
                    yield sse({"type": "message_stop"}, "message_stop")


class _Blocks:
    """Content-block bookkeeping of one streamed message: which block is open, at which index."""

    def __init__(self):
        self.index = -1
        self.open: str | None = None  # "text" or "tool_use"

    def _start(self, block: dict[str, Any]) -> str:
        self.index += 1
        self.open = block["type"]
        return sse({"type": "content_block_start", "index": self.index, "content_block": block},
                   "content_block_start")

    def close(self):
        if self.open is not None:
            self.open = None
            yield sse({"type": "content_block_stop", "index": self.index}, "content_block_stop")

    def _delta(self, delta: dict[str, Any]) -> str:
        return sse({"type": "content_block_delta", "index": self.index, "delta": delta}, "content_block_delta")

    def frames(self, item):
        if isinstance(item, ContentDelta):
            if self.open != "text":
                yield from self.close()
                yield self._start({"type": "text", "text": ""})
            yield self._delta({"type": "text_delta", "text": item.text})
        elif isinstance(item, ToolCallDelta):
            if item.id is not None:
                yield from self.close()
                yield self._start({"type": "tool_use", "id": item.id, "name": item.name, "input": {}})
            if item.arguments:
                yield self._delta({"type": "input_json_delta", "partial_json": item.arguments})
        elif isinstance(item, ToolCallDone):
            yield from self.close()
