"""GET /v1/models: the one model this server serves."""

from __future__ import annotations

from fastapi import APIRouter

from ..errors import APIError
from ..runtime import AppRuntime, Runtime
from ..schemas import ModelCard, ModelList

router = APIRouter()


def card(rt: Runtime) -> ModelCard:
    """The served model's entry."""
    return ModelCard(id=rt.model_name, created=int(rt.created), sizes=[f"{s}x{s}" for s in rt.sizes])


@router.get("/models", response_model=ModelList, summary="List the served model")
async def list_models(rt: AppRuntime) -> ModelList:
    return ModelList(data=[card(rt)])


@router.get("/models/{model_id}", response_model=ModelCard, summary="Describe the served model")
async def get_model(model_id: str, rt: AppRuntime) -> ModelCard:
    if model_id != rt.model_name:
        raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return card(rt)
