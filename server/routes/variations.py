"""POST /v1/images/variations: variations of an image (multipart, OpenAI-compatible).

The image is DDIM-inverted under its own CLIP embedding and decoded again with DDIM at
`eta` (extension; 0 reconstructs the image, larger varies more; default 0.8).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pipelines.operations import variations

from ..schemas import ImagesResponse, VariationRequest
from .forms import load_image, multipart_body, one_upload, read_form, square_tensor, text_fields
from .common import check_model, meta_for, new_seed, parse_params, parse_size, respond, run, runtime, sampling

router = APIRouter()

FILES = {"image": "square PNG/JPEG/WEBP under the upload limit"}
DEFAULT_ETA = 0.8


@router.post(
    "/images/variations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(VariationRequest, FILES, required=("image",)),
    summary="Create variations of an image",
)
async def create_variation(request: Request) -> Any:
    rt = runtime(request)
    form = await read_form(request)
    params: VariationRequest = parse_params(VariationRequest, text_fields(form, files=tuple(FILES)))
    check_model(rt, params.model)
    size, seed, n = parse_size(rt, params.size), new_seed(params.seed), params.n or 1
    image = square_tensor(await load_image(rt, one_upload(form, "image"), "image"), "image")
    eta = DEFAULT_ETA if params.eta is None else params.eta
    op = variations(rt.pipe, image, n=n, seed=seed, size=size, eta=eta, opts=sampling(params))
    result = await run(request, rt, op, "variation", n)
    return await respond(request, rt, result, meta_for(rt, "variation", seed, params, size, n=n, eta=eta),
                         params.response_format)
