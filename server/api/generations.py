"""POST /v1/images/generations: text to images (JSON body, OpenAI-compatible)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..requests.schemas import GenerationRequest, ImagesResponse
from ..requests.spec import Spec, parse_params, target
from ..runtime import ReadyRuntime
from .bodies import json_body, read_json
from .serve import serve
from .stream import SSE_RESPONSE

router = APIRouter()


@router.post(
    "/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=json_body(GenerationRequest), responses=SSE_RESPONSE,
    summary="Create images from a prompt (OpenAI-compatible; `stream=true` sends Server-Sent Events)",
)
async def create_generation(request: Request, rt: ReadyRuntime) -> Any:
    params: GenerationRequest = parse_params(GenerationRequest, await read_json(request))
    return await serve(request, rt, Spec("generation", params, target(rt, params, "generation")))

