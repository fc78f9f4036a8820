"""POST /v1/images/text-diffs (extension): move an image toward a new description.

Multipart body: `image` (square), `prompt` (the target), `source_prompt` (describes the
current image; default ""), `frames`, `max_theta`. Frame k decodes slerp(z_i, z_d,
theta_k) with theta rising from 0 to max_theta.
"""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Request

from pipelines.operations import DEFAULTS, text_diff, work

from ..requests.schemas import ImagesResponse, TextDiffRequest
from ..requests.spec import Plan, Target, builds, image_spec, sampling, serve
from ..runtime import ReadyRuntime, Runtime
from .bodies import multipart_body

router = APIRouter()

FILES = {"image": "square PNG/JPEG/WEBP under the upload limit"}


@router.post(
    "/images/text-diffs", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(TextDiffRequest, FILES, required=("image",)),
    summary="Text diffs: change an image along the direction between two descriptions (extension)",
)
async def create_text_diff(request: Request, rt: ReadyRuntime) -> Any:
    return await serve(request, rt, await image_spec(request, rt, TextDiffRequest, "text_diff"))


@builds("text_diff", TextDiffRequest)
def text_diff_plan(rt: Runtime, params: TextDiffRequest, out: Target, tensors: dict[str, torch.Tensor]) -> Plan:
    opts, frames = sampling(params), params.frames or DEFAULTS.frames
    op = text_diff(rt.pipe, tensors["image"], params.prompt, params.source_prompt, frames=frames,
                   max_theta=params.max_theta, seed=out.seed, size=out.size, opts=opts)
    cost = work(rt.pipe, out.size, opts, images=frames, inversions=1)
    texts = [params.prompt, params.source_prompt]
    return Plan(op, "text_diff", opts, cost, texts, input_images=1)
