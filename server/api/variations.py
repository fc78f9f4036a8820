"""POST /v1/images/variations: variations of an image (multipart, OpenAI-compatible).

The image is DDIM-inverted under its own CLIP embedding and decoded again with DDIM at
`eta` (extension; 0 reconstructs the image, larger varies more).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..requests.schemas import ImagesResponse, VariationRequest
from ..runtime import ReadyRuntime
from .bodies import image_spec, multipart_body
from .serve import serve

router = APIRouter()

FILES = {"image": "PNG/JPEG/WEBP under the upload limit; cropped to the output's aspect"}


@router.post(
    "/images/variations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(VariationRequest, FILES, required=("image",)),
    summary="Create variations of an image",
)
async def create_variation(request: Request, rt: ReadyRuntime) -> Any:
    return await serve(request, rt, await image_spec(request, rt, VariationRequest, "variation"))

