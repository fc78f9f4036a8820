"""GET /v1/models: the one model this server serves, with what it draws where its directory
says (server/world.py); GET /v1/models/{id}/random-caption: a random caption of that world."""

from __future__ import annotations

from typing import Optional

import numpy as np
from fastapi import APIRouter

from pipelines.sizes import size_name

from ..errors import APIError
from ..requests.schemas import ModelCaption, ModelCard, ModelList, ModelWorld
from ..runtime import AppRuntime, Runtime

router = APIRouter()


def side(size: Optional[int]) -> Optional[str]:
    return size_name((size, size)) if size is not None else None


def world_of(rt: Runtime) -> Optional[ModelWorld]:
    world = rt.about.world
    if world is None:
        return None
    return ModelWorld(name=world.name, description=world.description, examples=list(world.examples))


def card(rt: Runtime) -> ModelCard:
    """The served model's entry."""
    rule, model = rt.size_rule, rt.model
    return ModelCard(id=rt.model_name, created=int(rt.created), family=model.family,
                     sizes=[size_name(s) for s in rule.listed], default_size=size_name(rule.default),
                     size_rule=rule.describe(), stages={size_name(s): list(model.stages_at(s)) for s in rule.listed},
                     suggested_size=side(rt.about.suggested_size), world=world_of(rt))


def check_id(rt: Runtime, model_id: str) -> None:
    if model_id != rt.model_name:
        raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")


@router.get("/models", response_model=ModelList, summary="List the served model")
async def list_models(rt: AppRuntime) -> ModelList:
    return ModelList(data=[card(rt)])


@router.get("/models/{model_id}", response_model=ModelCard, summary="Describe the served model")
async def get_model(model_id: str, rt: AppRuntime) -> ModelCard:
    check_id(rt, model_id)
    return card(rt)


@router.get("/models/{model_id}/random-caption", response_model=ModelCaption,
            summary="A random caption of the world the model draws (extension)")
async def random_caption(model_id: str, rt: AppRuntime) -> ModelCaption:
    check_id(rt, model_id)
    if rt.about.world is None:
        raise APIError(404, f"The model '{model_id}' does not say what it draws (no world.json).",
                       param="model", code="world_unknown")
    return ModelCaption(caption=rt.about.world.caption(np.random.default_rng()))
