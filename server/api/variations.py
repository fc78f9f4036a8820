"""POST /v1/images/variations: variations of an image (multipart, OpenAI-compatible).

The image is DDIM-inverted under its own CLIP embedding and decoded again with DDIM at
`eta` (extension; 0 reconstructs the image, larger varies more).
"""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Request

from pipelines.operations import variations, work

from ..requests.schemas import ImagesResponse, VariationRequest
from ..requests.spec import Plan, Target, builds, image_spec, sampling, serve
from ..runtime import ReadyRuntime, Runtime
from .bodies import multipart_body

router = APIRouter()

FILES = {"image": "square PNG/JPEG/WEBP under the upload limit"}


@router.post(
    "/images/variations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(VariationRequest, FILES, required=("image",)),
    summary="Create variations of an image",
)
async def create_variation(request: Request, rt: ReadyRuntime) -> Any:
    return await serve(request, rt, await image_spec(request, rt, VariationRequest, "variation"))


@builds("variation", VariationRequest)
def variation_plan(rt: Runtime, params: VariationRequest, out: Target, tensors: dict[str, torch.Tensor]) -> Plan:
    opts = sampling(params)
    op = variations(rt.pipe, tensors["image"], n=params.n, seed=out.seed, size=out.size, eta=params.eta, opts=opts)
    cost = work(rt.pipe, out.size, opts, images=params.n, inversions=1)
    return Plan(op, "variation", opts, cost, input_images=1)
