"""POST /v1/images/edits: text-guided inpainting (multipart, OpenAI-compatible).

`image` (or `image[]` with one file, which the official client sends for lists) may have
any aspect: without a `size`, the output takes the size the model makes nearest it (the
image is centre-cropped to the output's aspect). The area to edit is where the `mask` is
transparent (alpha 0), or, without a mask, where the image itself is transparent.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..requests.schemas import EditRequest, ImagesResponse
from ..requests.spec import Spec, parse_params, sized_for, target
from ..runtime import ReadyRuntime
from .bodies import edit_mask, image_tensor, ingredients, load_image, multipart_body, one_upload, read_form, text_fields
from .serve import serve
from .stream import SSE_RESPONSE

router = APIRouter()

FILES = {"image": "PNG/JPEG/WEBP under the upload limit (also as `image[]`, one file); cropped to the output's "
                  "aspect",
         "mask": "optional; alpha 0 marks the area to edit; same size as the image"}


@router.post(
    "/images/edits", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(EditRequest, FILES, required=("image",)), responses=SSE_RESPONSE,
    summary="Edit an image: regenerate its transparent area from a prompt (inpainting)",
)
async def create_edit(request: Request, rt: ReadyRuntime) -> Any:
    form = await read_form(request)
    params: EditRequest = parse_params(EditRequest, text_fields(form, files=tuple(FILES)))
    out = target(rt, params, "edit")
    image = await load_image(rt, one_upload(form, "image"), "image")
    mask_file = one_upload(form, "mask", required=False)
    mask = await load_image(rt, mask_file, "mask", index=None) if mask_file is not None else None
    tensors = {"image": image_tensor(image), "keep": edit_mask(image, mask)}
    return await serve(request, rt, Spec("edit", params, sized_for(rt, params, out, image.size), tensors,
                                         ingredients(image)))

