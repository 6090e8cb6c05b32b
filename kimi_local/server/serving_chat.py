"""POST /v1/chat/completions: an OpenAI chat request -> engine requests -> a ChatCompletion or its SSE chunks.

Everything that can be refused is refused before the first byte is sent (bad fields, tool choice, prompt
longer than the context, full queue), so those are plain 4xx responses. After that, streamed chunks follow
OpenAI's order per choice: a role chunk, content and tool-call deltas (the first delta of a call carries its
id, type and name; later ones argument fragments), a chunk with the finish reason; then the usage chunk when
`stream_options.include_usage` is set, then `data: [DONE]`. A generation error mid-stream is sent as a
`data: {"error": ...}` frame, which the openai client raises as an APIError.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from kimi_local.server.chat_prompt import ChatPrompt, build_chat_prompt
from kimi_local.text.choice_text import ChoiceEvent, ChoiceText
from kimi_local.server.errors import engine_failure
from kimi_local.server.generation import close_streams, run_choices, submit_all
from kimi_local.server.openai_protocol import (
    ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatDelta, ChatMessage,
    ChoiceLogprobs, DeltaFunction, DeltaToolCall, FunctionCall, TokenLogprob, ToolCall, TopLogprob, Usage,
)
from kimi_local.server.reply import Reply
from kimi_local.server.serving_common import SSE_HEADERS, new_id, read_request, sampling_params, sse, token_text
from kimi_local.server.state import ServerState
from kimi_local.text.tool_calls import ContentDelta, ToolCallDelta

CLIENT_GONE = 499  # nginx's status for a client that closed the connection; never actually delivered


def _tool_choice(req: ChatCompletionRequest):
    choice = req.tool_choice
    return choice.model_dump() if hasattr(choice, "model_dump") else choice


def token_logprobs(state: ServerState, event: ChoiceEvent) -> list[TokenLogprob]:
    out = []
    for sampled in event.tokens:
        if sampled.logprobs is None:
            continue
        text, raw = token_text(state.tokenizer, sampled.token_id)
        top = []
        for token_id, logprob in sampled.logprobs.top:
            t, b = token_text(state.tokenizer, token_id)
            top.append(TopLogprob(token=t, logprob=logprob, bytes=b))
        out.append(TokenLogprob(token=text, logprob=sampled.logprobs.logprob, bytes=raw, top_logprobs=top))
    return out


class ChatServing:
    def __init__(self, state: ServerState):
        self.state = state

    async def create(self, request: Request) -> Response:
        req = await read_request(request, ChatCompletionRequest)
        state = self.state
        prompt: ChatPrompt = await asyncio.to_thread(
            build_chat_prompt, state.chat_format, req.messages, req.tools, _tool_choice(req),
            req.continue_final_message)
        stop_ids = frozenset() if req.ignore_eos else state.stop_ids
        params = sampling_params(
            req.n, len(prompt.prompt_ids), state.max_context, stop_ids, temperature=req.temperature,
            top_p=req.top_p, top_k=req.top_k, max_tokens=req.token_limit, seed=req.seed,
            logprobs=(req.top_logprobs or 0) if req.logprobs else None)
        streams = submit_all(state.service, [prompt.prompt_ids] * req.n, params, "messages")
        texts = [ChoiceText(i, state.tokenizer, stop_ids, req.stop_strings) for i in range(req.n)]
        replies = [Reply(prompt.parse_tools, prompt.forced_text) for _ in range(req.n)]
        run = _Run(state, req, request, prompt, texts, replies, new_id("chatcmpl-"))
        if req.stream:
            return StreamingResponse(run.stream(streams), media_type="text/event-stream", headers=SSE_HEADERS,
                                     background=BackgroundTask(close_streams, streams))
        return await run.collect(streams)


class _Run:
    """The state of one chat request while its choices generate."""

    def __init__(self, state: ServerState, req: ChatCompletionRequest, request: Request, prompt: ChatPrompt,
                 texts: list[ChoiceText], replies: list[Reply], completion_id: str):
        self.state, self.req, self.request, self.prompt = state, req, request, prompt
        self.texts, self.replies, self.id = texts, replies, completion_id
        self.created = int(time.time())

    def usage(self) -> Usage:
        return Usage.of([self.prompt.prompt_ids], self.texts, len(self.texts))

    def _events(self, event: ChoiceEvent):
        reply = self.replies[event.index]
        events = reply.feed(event.text)
        if event.is_final:
            events += reply.finish()
        return events

    # -- non-streaming -------------------------------------------------------------------------------
    async def collect(self, streams) -> Response:
        logprobs: list[list[TokenLogprob]] = [[] for _ in self.texts]
        reasons: list[str | None] = [None] * len(self.texts)
        async with aclosing(run_choices(self.request, streams, self.texts)) as events:
            async for event in events:
                self._events(event)
                if self.req.logprobs:
                    logprobs[event.index] += token_logprobs(self.state, event)
                if event.finish_reason == "error":
                    raise engine_failure(event.error)
                if event.is_final:
                    reasons[event.index] = event.finish_reason
        if self.request.state.disconnected:
            return Response(status_code=CLIENT_GONE)
        choices = []
        for i, reply in enumerate(self.replies):
            calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                     for c in reply.tool_calls]
            message = ChatMessage(content=reply.text or (None if calls else ""), tool_calls=calls or None)
            choices.append(ChatChoice(index=i, message=message, finish_reason=reply.finish_reason(reasons[i]),
                                      logprobs=ChoiceLogprobs(content=logprobs[i]) if self.req.logprobs else None))
        body = ChatCompletion(id=self.id, created=self.created, model=self.state.model_name, choices=choices,
                              usage=self.usage())
        return Response(body.to_json(), media_type="application/json")

    # -- streaming -----------------------------------------------------------------------------------
    def _chunk(self, index: int, delta: ChatDelta, finish_reason: str | None = None,
               logprobs: list[TokenLogprob] | None = None) -> str:
        choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason,
                                 logprobs=ChoiceLogprobs(content=logprobs) if logprobs is not None else None)
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.state.model_name, choices=[choice])
        return sse(chunk.to_json())

    async def stream(self, streams):
        for i in range(len(self.texts)):
            yield self._chunk(i, ChatDelta(role="assistant", content=""))
        async with aclosing(run_choices(self.request, streams, self.texts)) as events:
            async for event in events:
                for frame in self._frames(event):
                    yield frame
                if event.finish_reason == "error":
                    error = engine_failure(event.error)
                    yield sse(error.openai_body())
                    yield sse("[DONE]")
                    return
        if self.request.state.disconnected:
            return
        options = self.req.stream_options
        if options is not None and options.include_usage:
            usage_chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.state.model_name,
                                              choices=[], usage=self.usage())
            yield sse(usage_chunk.to_json())
        yield sse("[DONE]")

    def _frames(self, event: ChoiceEvent):
        i = event.index
        content = []
        calls = []
        for item in self._events(event):
            if isinstance(item, ContentDelta):
                content.append(item.text)
            elif isinstance(item, ToolCallDelta):
                calls.append(DeltaToolCall(
                    index=item.index, id=item.id, type="function" if item.id is not None else None,
                    function=DeltaFunction(name=item.name, arguments=item.arguments)))
        logprobs = token_logprobs(self.state, event) if self.req.logprobs else None
        if content or logprobs:
            yield self._chunk(i, ChatDelta(content="".join(content)), logprobs=logprobs)
        if calls:
            yield self._chunk(i, ChatDelta(tool_calls=calls))
        if event.is_final and event.finish_reason != "error":
            yield self._chunk(i, ChatDelta(), finish_reason=self.replies[i].finish_reason(event.finish_reason))
