"""POST /v1/images/text-diffs (extension): move an image toward a new description.

Multipart body: `image` (any aspect), `prompt` (the target), `source_prompt` (describes the
current image; default ""), `frames`, `max_theta`. Frame k decodes slerp(z_i, z_d,
theta_k) with theta rising from 0 to max_theta.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..requests.schemas import ImagesResponse, TextDiffRequest
from ..runtime import ReadyRuntime
from .bodies import image_spec, multipart_body
from .serve import serve

router = APIRouter()

FILES = {"image": "PNG/JPEG/WEBP under the upload limit; cropped to the output's aspect"}


@router.post(
    "/images/text-diffs", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(TextDiffRequest, FILES, required=("image",)),
    summary="Text diffs: change an image along the direction between two descriptions (extension)",
)
async def create_text_diff(request: Request, rt: ReadyRuntime) -> Any:
    return await serve(request, rt, await image_spec(request, rt, TextDiffRequest, "text_diff"))

