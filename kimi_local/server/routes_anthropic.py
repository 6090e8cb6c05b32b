"""Anthropic routes on the same port: thin, the serving object lives on `app.state`. Keys are accepted as
`x-api-key` or a bearer token; the `anthropic-version` header is accepted whatever its value."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from kimi_local.server.routes_openai import require_key

router = APIRouter(prefix="/v1/messages", dependencies=[Depends(require_key)])


@router.post("")
async def create_message(request: Request) -> Response:
    return await request.app.state.messages.create(request)


@router.post("/count_tokens")
async def count_tokens(request: Request) -> Response:
    return await request.app.state.messages.count_tokens(request)
