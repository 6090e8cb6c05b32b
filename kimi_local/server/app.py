"""The FastAPI application, made by a factory from a `ServerState` (no globals: tests build as many as they like).

`app.state` holds the shared state and one serving object per API; routes only look them up. Errors from
anywhere become JSON in the caller's protocol: Anthropic's shape under `/v1/messages`, OpenAI's elsewhere, and
an unexpected exception is a 500 for that request only. A small ASGI middleware counts responses by route
and status for `/metrics`. Another refuses requests whose Host is not one of the server's names (see
`trusted_hosts.py`: a web page's DNS rebinding); `host` is the address the server binds.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kimi_local import __version__
from kimi_local.server import routes_anthropic, routes_openai, routes_system
from kimi_local.server.errors import ApiError
from kimi_local.server.metrics import ServerMetrics
from kimi_local.server.serving_chat import ChatServing
from kimi_local.server.serving_completions import CompletionServing
from kimi_local.server.serving_messages import MessagesServing
from kimi_local.server.state import ServerState
from kimi_local.server.trusted_hosts import TrustedHosts, allowed_hosts

log = logging.getLogger(__name__)

ANTHROPIC_PREFIX = "/v1/messages"
ENDPOINTS = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
                       "/v1/messages", "/v1/messages/count_tokens"})


def error_response(request: Request, error: ApiError) -> JSONResponse:
    anthropic = request.url.path.startswith(ANTHROPIC_PREFIX)
    body = error.anthropic_body() if anthropic else error.openai_body()
    headers = {"Retry-After": "1"} if error.status in (429, 503) else None
    return JSONResponse(body, status_code=error.status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    messages = {404: f"no route for {request.method} {request.url.path}",
                405: f"method {request.method} is not allowed for {request.url.path}"}
    return error_response(request, ApiError(exc.status_code, messages.get(exc.status_code, str(exc.detail))))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"invalid request: {first.get('msg', 'bad value')}"
    return error_response(request, ApiError(400, message, param=loc or None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request %s %s failed", request.method, request.url.path)
    return error_response(request, ApiError(500, f"internal error: {type(exc).__name__}", code="internal_error"))


class CountRequests:
    """Counts responses by route and status; unknown paths are counted as "other" (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, known_paths: set[str]):
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            path = scope.get("path", "")
            if path in self.known_paths:
                endpoint = path
            else:
                endpoint = "/v1/models/{id}" if path.startswith("/v1/models/") else "other"
            self.metrics.count_request(endpoint, status)


def create_app(state: ServerState, host: str = "127.0.0.1") -> FastAPI:
    app = FastAPI(title="kimi-local", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.kimi = state
    app.state.chat = ChatServing(state)
    app.state.completions = CompletionServing(state)
    app.state.messages = MessagesServing(state)
    for router in (routes_openai.router, routes_anthropic.router, routes_system.router):
        app.include_router(router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(TrustedHosts, names=allowed_hosts(host), render=error_response)
    app.add_middleware(CountRequests, metrics=state.metrics, known_paths=ENDPOINTS)  # outermost: counts refusals
    return app
