"""Health and metrics. `/health` needs no key (for load balancers and `kimi-local` itself); `/metrics`
does when one is configured (Prometheus sends it as a bearer token)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kimi_local.server.auth import check_api_key
from kimi_local.server.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    state = request.app.state.kimi
    stats = state.service.stats()
    return JSONResponse({"status": "ok", "model": state.model_name, "running": stats.running,
                         "waiting": stats.waiting, "max_context": state.max_context})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = request.app.state.kimi
    check_api_key(request, state.api_key)
    per_expert = request.query_params.get("experts", "") in ("1", "true", "yes")
    engine = state.service.engine
    text = state.metrics.render(state.service.stats(), state.service.max_queue, engine.max_batch, per_expert)
    return Response(text, media_type=CONTENT_TYPE)
