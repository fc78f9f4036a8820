"""POST /v1/images/edits: text-guided inpainting (multipart, OpenAI-compatible).

`image` (or `image[]` with one file, which the official client sends for lists) must be
square; the area to edit is where the `mask` is transparent (alpha 0), or, without a
mask, where the image itself is transparent.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pipelines.imageio import keep_mask
from pipelines.operations import inpaint

from ..schemas import EditRequest, ImagesResponse
from .forms import load_image, multipart_body, one_upload, read_form, square_tensor, text_fields
from .common import check_model, meta_for, new_seed, parse_params, parse_size, respond, run, runtime, sampling, submit
from .stream import progress_queue, stream_response

router = APIRouter()

FILES = {"image": "square PNG/JPEG/WEBP under the upload limit (also as `image[]`, one file)",
         "mask": "optional; alpha 0 marks the area to edit; same size as the image"}


@router.post(
    "/images/edits", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(EditRequest, FILES, required=("image",)),
    summary="Edit an image: regenerate its transparent area from a prompt (inpainting)",
)
async def create_edit(request: Request) -> Any:
    rt = runtime(request)
    form = await read_form(request)
    params: EditRequest = parse_params(EditRequest, text_fields(form, files=tuple(FILES)))
    check_model(rt, params.model)
    size, seed, n = parse_size(rt, params.size), new_seed(params.seed), params.n or 1
    image = await load_image(rt, one_upload(form, "image"), "image")
    mask_file = one_upload(form, "mask", required=False)
    mask = await load_image(rt, mask_file, "mask") if mask_file is not None else None
    tensor, keep = square_tensor(image, "image"), keep_mask(image, mask)
    op = inpaint(rt.pipe, tensor, keep, params.prompt, n=n, seed=seed, size=size,
                 resample=params.resample or 1, opts=sampling(params))
    meta = meta_for(rt, "edit", seed, params, size, n=n)
    if params.stream:
        queue, hook = progress_queue()
        return stream_response(request, submit(rt, op, "edit", n, on_progress=hook), queue, meta, "image_edit", size)
    result = await run(request, rt, op, "edit", n)
    return await respond(request, rt, result, meta, params.response_format)
