"""GET /v1/models: the one model this server serves."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..errors import APIError
from ..schemas import ModelCard, ModelList

router = APIRouter()


@router.get("/models", response_model=ModelList, summary="List the served model")
async def list_models(request: Request) -> ModelList:
    rt = request.app.state.runtime
    card = ModelCard(id=rt.model_name, created=int(rt.created), sizes=[f"{s}x{s}" for s in rt.sizes])
    return ModelList(data=[card])


@router.get("/models/{model_id}", response_model=ModelCard, summary="Describe the served model")
async def get_model(model_id: str, request: Request) -> ModelCard:
    rt = request.app.state.runtime
    if model_id != rt.model_name:
        raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return ModelCard(id=rt.model_name, created=int(rt.created), sizes=[f"{s}x{s}" for s in rt.sizes])
