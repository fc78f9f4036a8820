"""POST /v1/images/text-diffs (extension): move an image toward a new description.

Multipart body: `image` (square), `prompt` (the target), `source_prompt` (describes the
current image; default ""), `frames` (default 5), `max_theta` (default 0.5). Frame k
decodes slerp(z_i, z_d, theta_k) with theta rising from 0 to max_theta.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pipelines.operations import text_diff

from ..schemas import ImagesResponse, TextDiffRequest
from .forms import load_image, multipart_body, one_upload, read_form, square_tensor, text_fields
from .common import check_model, meta_for, new_seed, parse_params, parse_size, respond, run, runtime, sampling

router = APIRouter()

FILES = {"image": "square PNG/JPEG/WEBP under the upload limit"}
DEFAULT_FRAMES, DEFAULT_MAX_THETA = 5, 0.5


@router.post(
    "/images/text-diffs", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(TextDiffRequest, FILES, required=("image",)),
    summary="Text diffs: change an image along the direction between two descriptions (extension)",
)
async def create_text_diff(request: Request) -> Any:
    rt = runtime(request)
    form = await read_form(request)
    params: TextDiffRequest = parse_params(TextDiffRequest, text_fields(form, files=tuple(FILES)))
    check_model(rt, params.model)
    size, seed = parse_size(rt, params.size), new_seed(params.seed)
    frames = params.frames or DEFAULT_FRAMES
    max_theta = DEFAULT_MAX_THETA if params.max_theta is None else params.max_theta
    image = square_tensor(await load_image(rt, one_upload(form, "image"), "image"), "image")
    op = text_diff(rt.pipe, image, params.prompt, params.source_prompt, frames=frames, max_theta=max_theta,
                   seed=seed, size=size, opts=sampling(params))
    meta = meta_for(rt, "text_diff", seed, params, size, frames=frames, max_theta=max_theta)
    result = await run(request, rt, op, "text_diff", frames)
    return await respond(request, rt, result, meta, params.response_format)
