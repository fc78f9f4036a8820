"""POST /v1/images/generations: text to images (JSON body, OpenAI-compatible)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pipelines.operations import generate, work

from ..runtime import ReadyRuntime
from ..schemas import GenerationRequest, ImagesResponse
from .bodies import json_body, read_json
from .common import parse_params, sampling, serve, target
from .stream import SSE_RESPONSE

router = APIRouter()


@router.post(
    "/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=json_body(GenerationRequest), responses=SSE_RESPONSE,
    summary="Create images from a prompt (OpenAI-compatible; `stream=true` sends Server-Sent Events)",
)
async def create_generation(request: Request, rt: ReadyRuntime) -> Any:
    params: GenerationRequest = parse_params(GenerationRequest, await read_json(request))
    out = target(rt, params)
    opts = sampling(params)
    op = generate(rt.pipe, params.prompt, n=params.n, seed=out.seed, size=out.size, opts=opts)
    cost = work(rt.pipe, out.size, opts, images=params.n, prior_samples=params.n)
    return await serve(request, rt, params, op, "generation", out, cost)
