"""POST /v1/images/generations: text to images (JSON body, OpenAI-compatible)."""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Request

from pipelines.operations import DEFAULTS, generate, walk, walk_keys, work

from ..delivery.progress import SSE_RESPONSE
from ..requests.schemas import GenerationRequest, ImagesResponse
from ..requests.spec import Plan, Spec, Target, builds, parse_params, sampling, serve, target
from ..runtime import ReadyRuntime, Runtime
from .bodies import json_body, read_json

router = APIRouter()


@router.post(
    "/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=json_body(GenerationRequest), responses=SSE_RESPONSE,
    summary="Create images from a prompt (OpenAI-compatible; `stream=true` sends Server-Sent Events)",
)
async def create_generation(request: Request, rt: ReadyRuntime) -> Any:
    params: GenerationRequest = parse_params(GenerationRequest, await read_json(request))
    return await serve(request, rt, Spec("generation", params, target(rt, params, "generation")))


@builds("generation", GenerationRequest)
def generation_plan(rt: Runtime, params: GenerationRequest, out: Target, tensors: dict[str, torch.Tensor]) -> Plan:
    opts = sampling(params)
    if out.fmt.format == "gif":  # the frames of a walk through the prompt's image embeddings
        frames = params.frame_count or DEFAULTS.walk_frames
        op = walk(rt.pipe, params.prompt, frames=frames, seed=out.seed, size=out.size, opts=opts)
        cost = work(rt.pipe, out.size, opts, images=frames, prior_samples=walk_keys(frames))
    else:
        op = generate(rt.pipe, params.prompt, n=params.n, seed=out.seed, size=out.size, opts=opts)
        cost = work(rt.pipe, out.size, opts, images=params.n, prior_samples=params.n)
    return Plan(op, "generation", opts, cost, [params.prompt])
