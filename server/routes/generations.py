"""POST /v1/images/generations: text to images (JSON body, OpenAI-compatible)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from pipelines.operations import generate

from ..errors import bad_request
from ..schemas import GenerationRequest, ImagesResponse
from .forms import json_body
from .common import check_model, meta_for, new_seed, parse_params, parse_size, respond, run, runtime, sampling, submit
from .stream import progress_queue, stream_response

router = APIRouter()


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object (400 otherwise)."""
    try:
        raw = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise bad_request(None, "The body must be a JSON object.", "invalid_json") from None
    if not isinstance(raw, dict):
        raise bad_request(None, "The body must be a JSON object.", "invalid_json")
    return raw


@router.post(
    "/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=json_body(GenerationRequest),
    summary="Create images from a prompt (OpenAI-compatible; `stream=true` sends Server-Sent Events)",
)
async def create_generation(request: Request) -> Any:
    rt = runtime(request)
    params: GenerationRequest = parse_params(GenerationRequest, await read_json(request))
    check_model(rt, params.model)
    size, seed, n = parse_size(rt, params.size), new_seed(params.seed), params.n or 1
    op = generate(rt.pipe, params.prompt, n=n, seed=seed, size=size, opts=sampling(params))
    meta = meta_for(rt, "generation", seed, params, size, n=n)
    if params.stream:
        queue, hook = progress_queue()
        job = submit(rt, op, "generation", n, on_progress=hook)
        return stream_response(request, job, queue, meta, "image_generation", size)
    result = await run(request, rt, op, "generation", n)
    return await respond(request, rt, result, meta, params.response_format)
