"""OpenAI routes: thin, each hands the request to its serving object on `app.state`."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from kimi_local.server.auth import check_api_key
from kimi_local.server.errors import ApiError
from kimi_local.server.openai_protocol import ModelCard, ModelList


def require_key(request: Request) -> None:
    check_api_key(request, request.app.state.kimi.api_key)


router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


def _card(request: Request) -> ModelCard:
    state = request.app.state.kimi
    return ModelCard(id=state.model_name, created=int(state.metrics.started), max_model_len=state.max_context)


@router.get("/models")
async def list_models(request: Request) -> Response:
    return Response(ModelList(data=[_card(request)]).to_json(), media_type="application/json")


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    card = _card(request)
    if model_id != card.id:
        raise ApiError(404, f"The model '{model_id}' does not exist; this server serves '{card.id}'",
                       param="model", code="model_not_found")
    return Response(card.to_json(), media_type="application/json")


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await request.app.state.chat.create(request)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await request.app.state.completions.create(request)
