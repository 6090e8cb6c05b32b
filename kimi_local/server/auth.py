"""API key check: `Authorization: Bearer KEY` (OpenAI clients) or `x-api-key: KEY` (Anthropic clients).

With no key configured every request is let in (the server binds loopback by default). Keys are compared in
constant time.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from kimi_local.server.errors import ApiError


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


def check_api_key(request: Request, expected: str) -> None:
    if not expected:
        return
    key = presented_key(request)
    if key is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
                       code="invalid_api_key")
    if not hmac.compare_digest(key.encode("utf-8"), expected.encode("utf-8")):
        raise ApiError(401, "incorrect API key provided", code="invalid_api_key")
