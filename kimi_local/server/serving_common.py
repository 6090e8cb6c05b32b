"""Translation pieces both protocols share: sampling parameters, ids, token text, SSE frames, body parsing
(JSON only, declared as such).

`n` choices become `n` SamplingParams; with a seed they get seeds seed, seed+1, ... so the choices differ from
each other while the whole response stays reproducible. Without a token limit a reply may run to the end of
the context (the engine stops there with "length").
"""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from kimi_local.engine.sampling import SamplingParams
from kimi_local.server.errors import ApiError, bad_request, from_validation_error, parse_json_body
from kimi_local.text.tokenizer import KimiTokenizer

DEFAULT_TEMPERATURE = 0.6  # Kimi-K2-Instruct's recommended temperature
SEED_MASK = (1 << 63) - 1
MAX_BODY_BYTES = 16 << 20  # a 128K-token prompt is ~0.5 MB of text, ~3 MB JSON-escaped at worst

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or a 413 as soon as it is known to exceed `limit` (declared or as it arrives): a huge
    body would otherwise be held, parsed and tokenized whole (a 128 MB one took 2.5 GB of RSS)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body has {int(declared)} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def check_json_content_type(request: Request) -> None:
    """A 415 unless the body is declared `application/json` (charset, if given, UTF-8). Browsers send other
    types (text/plain, forms) cross-site without asking the server first; JSON needs a CORS preflight, which
    this server never grants, so a web page cannot POST to it."""
    declared = request.headers.get("content-type", "")
    media_type, *params = (part.strip().lower() for part in declared.split(";"))
    charsets = [p.partition("=")[2].strip().strip('"') for p in params if p.partition("=")[0].strip() == "charset"]
    if media_type == "application/json" and all(c in ("utf-8", "utf8") for c in charsets):
        return
    shown = f"Content-Type {declared!r}" if declared else "no Content-Type"
    raise ApiError(415, f"the request body must be JSON sent as 'Content-Type: application/json' (UTF-8), got "
                        f"{shown}", code="unsupported_media_type")


async def read_request(request: Request, model: type[M]) -> M:
    """The body parsed as JSON and validated into `model`; a body not declared as JSON is a 415, every other
    problem a 400 naming the field."""
    check_json_content_type(request)
    body = parse_json_body(await read_body(request))
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def sampling_params(n: int, prompt_tokens: int, max_context: int, stop_ids: frozenset[int], *,
                    temperature: float | None, top_p: float | None, top_k: int | None, max_tokens: int | None,
                    seed: int | None, logprobs: int | None) -> list[SamplingParams]:
    room = max(1, max_context - prompt_tokens)
    limit = room if max_tokens is None else max_tokens
    try:
        return [
            SamplingParams(
                temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
                top_p=1.0 if top_p is None else top_p,
                top_k=top_k or 0,
                seed=None if seed is None else (seed + i) & SEED_MASK,
                max_new_tokens=limit,
                stop_ids=stop_ids,
                logprobs=logprobs,
            )
            for i in range(n)
        ]
    except ValueError as exc:  # the protocol models check ranges first; this is the engine's own check
        raise bad_request(str(exc)) from None


def token_text(tokenizer: KimiTokenizer, token_id: int) -> tuple[str, list[int]]:
    """A token's text (invalid UTF-8 replaced) and its raw bytes, as the logprobs fields want them."""
    raw = tokenizer.token_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def sse(data: str | dict[str, Any], event: str | None = None) -> str:
    """One server-sent event frame."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
