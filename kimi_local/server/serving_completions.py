"""POST /v1/completions: raw prompts (no chat template) -> text, OpenAI's legacy completions shape.

A prompt may be a string, a list of strings, a list of token ids or a list of such lists; each prompt gets `n`
choices, numbered prompt-major (prompt p, sample j -> index p*n + j), and all of them are submitted together.
Prompt strings are encoded with special-token text allowed: whoever writes a raw prompt owns all of it, and
the chat markers are how Kimi's turns are spelled. `echo` puts the prompt text in front of each choice.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from kimi_local.text.choice_text import ChoiceEvent, ChoiceText
from kimi_local.server.errors import bad_request, engine_failure
from kimi_local.server.generation import close_streams, run_choices, submit_all
from kimi_local.server.openai_protocol import (
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Usage,
)
from kimi_local.server.serving_chat import CLIENT_GONE
from kimi_local.server.serving_common import SSE_HEADERS, new_id, read_request, sampling_params, sse, token_text
from kimi_local.server.state import ServerState


def prompt_id_lists(state: ServerState, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise bad_request("prompt is empty", param="prompt")
    out = []
    for i, p in enumerate(prompts):
        ids = state.tokenizer.encode(p, allow_special=True) if isinstance(p, str) else [int(t) for t in p]
        if not ids:
            raise bad_request(f"prompt {i} is empty", param="prompt")
        out.append(ids)
    return out


class CompletionServing:
    def __init__(self, state: ServerState):
        self.state = state

    async def create(self, request: Request) -> Response:
        req = await read_request(request, CompletionRequest)
        state = self.state
        prompts = await asyncio.to_thread(prompt_id_lists, state, req.prompt)
        submissions, params = [], []
        stop_ids = frozenset() if req.ignore_eos else state.stop_ids
        for ids in prompts:
            params += sampling_params(
                req.n, len(ids), state.max_context, stop_ids, temperature=req.temperature, top_p=req.top_p,
                top_k=req.top_k, max_tokens=req.token_limit, seed=req.seed, logprobs=req.logprobs)
            submissions += [ids] * req.n
        streams = submit_all(state.service, submissions, params, "prompt")
        texts = [ChoiceText(i, state.tokenizer, stop_ids, req.stop_strings) for i in range(len(streams))]
        run = _Run(state, req, request, prompts, texts)
        if req.stream:
            return StreamingResponse(run.stream(streams), media_type="text/event-stream", headers=SSE_HEADERS,
                                     background=BackgroundTask(close_streams, streams))
        return await run.collect(streams)


class _Run:
    def __init__(self, state: ServerState, req: CompletionRequest, request: Request, prompts: list[list[int]],
                 texts: list[ChoiceText]):
        self.state, self.req, self.request, self.prompts, self.texts = state, req, request, prompts, texts
        self.id = new_id("cmpl-")
        self.created = int(time.time())
        n = req.n
        self.echo = [state.tokenizer.decode(prompts[i // n]) if req.echo else "" for i in range(len(texts))]
        self.offsets = [len(e) for e in self.echo]  # text offset of the next token, per choice

    def usage(self) -> Usage:
        return Usage.of(self.prompts, self.texts, self.req.n)

    def _logprobs(self, event: ChoiceEvent) -> CompletionLogprobs:
        out = CompletionLogprobs(top_logprobs=[] if self.req.logprobs else None)
        for sampled in event.tokens:
            if sampled.logprobs is None:
                continue
            text, _ = token_text(self.state.tokenizer, sampled.token_id)
            out.tokens.append(text)
            out.token_logprobs.append(sampled.logprobs.logprob)
            out.text_offset.append(self.offsets[event.index])
            self.offsets[event.index] += len(text)
            if out.top_logprobs is not None:
                out.top_logprobs.append({token_text(self.state.tokenizer, t)[0]: lp for t, lp in sampled.logprobs.top})
        return out

    @staticmethod
    def _reason(event: ChoiceEvent) -> str:
        return "length" if event.finish_reason == "length" else "stop"

    async def collect(self, streams) -> Response:
        text = list(self.echo)
        logprobs = [CompletionLogprobs(top_logprobs=[] if self.req.logprobs else None) for _ in self.texts]
        reasons: list[str] = ["stop"] * len(self.texts)
        async with aclosing(run_choices(self.request, streams, self.texts)) as events:
            async for event in events:
                if event.finish_reason == "error":
                    raise engine_failure(event.error)
                text[event.index] += event.text
                if self.req.logprobs is not None:
                    part = self._logprobs(event)
                    mine = logprobs[event.index]
                    mine.tokens += part.tokens
                    mine.token_logprobs += part.token_logprobs
                    mine.text_offset += part.text_offset
                    if mine.top_logprobs is not None:
                        mine.top_logprobs += part.top_logprobs or []
                if event.is_final:
                    reasons[event.index] = self._reason(event)
        if self.request.state.disconnected:
            return Response(status_code=CLIENT_GONE)
        choices = [CompletionChoice(index=i, text=text[i], finish_reason=reasons[i],
                                    logprobs=logprobs[i] if self.req.logprobs is not None else None)
                   for i in range(len(self.texts))]
        body = Completion(id=self.id, created=self.created, model=self.state.model_name, choices=choices,
                          usage=self.usage())
        return Response(body.to_json(), media_type="application/json")

    def _chunk(self, choice: CompletionChoice) -> str:
        chunk = Completion(id=self.id, created=self.created, model=self.state.model_name, choices=[choice])
        return sse(chunk.to_json())

    async def stream(self, streams):
        for i, echo in enumerate(self.echo):
            if echo:
                yield self._chunk(CompletionChoice(index=i, text=echo, finish_reason=None))
        async with aclosing(run_choices(self.request, streams, self.texts)) as events:
            async for event in events:
                if event.finish_reason == "error":
                    yield sse(engine_failure(event.error).openai_body())
                    yield sse("[DONE]")
                    return
                logprobs = self._logprobs(event) if self.req.logprobs is not None else None
                if event.text or event.tokens:
                    yield self._chunk(CompletionChoice(index=event.index, text=event.text, finish_reason=None,
                                                       logprobs=logprobs))
                if event.is_final:
                    yield self._chunk(CompletionChoice(index=event.index, text="", finish_reason=self._reason(event)))
        if self.request.state.disconnected:
            return
        options = self.req.stream_options
        if options is not None and options.include_usage:
            yield sse(Completion(id=self.id, created=self.created, model=self.state.model_name, choices=[],
                                 usage=self.usage()).to_json())
        yield sse("[DONE]")
