"""POST /v1/images/interpolations (extension): frames between two images or two prompts.

Multipart body: two files as `image[]` (or `image` twice), or two text fields `prompt[]`
(or `prompt` twice); `frames` evenly spaced thetas from 0 to 1, or explicit `thetas`
(`thetas[]` repeated, or one comma-separated field); `mode` "slerp" (x_T slerped between
the two inverted latents: the end frames reconstruct the inputs) or "fixed" (one x_T).
Every frame is one image of the response, with its `theta`.
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Request
from starlette.datastructures import FormData

from pipelines.operations import interpolation_thetas

from ..errors import bad_request
from ..requests.schemas import MAX_PROMPT, ImagesResponse, InterpolationRequest
from ..requests.spec import Spec, parse_params, sized_for, target
from ..runtime import ReadyRuntime, Runtime
from .bodies import Upload, image_tensor, ingredients, load_image, multipart_body, read_form, text_fields, uploads
from .serve import serve

router = APIRouter()
Ends = tuple[Optional[list[Upload]], Optional[list[str]]]

FILES = {"image": "two images: send the field `image[]` (or `image`) twice; cropped to the output's aspect"}


def split_thetas(raw: dict[str, Any]) -> dict[str, Any]:
    """Allow thetas as one comma-separated field ("0,0.5,1")."""
    thetas = raw.get("thetas")
    if thetas is not None:
        raw["thetas"] = [t.strip() for v in thetas for t in str(v).split(",") if t.strip()]
    return raw


async def endpoints(form: FormData, rt: Runtime, params: InterpolationRequest) -> Ends:
    """(the two uploads, None) or (None, prompts x2); 400 otherwise."""
    files, prompts = uploads(form, "image"), params.prompt or []
    if files and prompts:
        raise bad_request("prompt", "Give two images or two prompts, not both.")
    if files:
        if len(files) != 2:
            raise bad_request("image", f"An interpolation needs exactly two images; got {len(files)}.")
        return [await load_image(rt, f, "image", i) for i, f in enumerate(files)], None
    if len(prompts) != 2 or not all(p.strip() for p in prompts):
        raise bad_request("prompt", "An interpolation needs exactly two images or two non-empty prompts.")
    if any(len(p) > MAX_PROMPT for p in prompts):
        raise bad_request("prompt", f"Each prompt must be at most {MAX_PROMPT} characters.")
    return None, prompts


@router.post(
    "/images/interpolations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(InterpolationRequest, FILES),
    summary="Interpolate between two images or two prompts in CLIP image-embedding space (extension)",
)
async def create_interpolation(request: Request, rt: ReadyRuntime) -> Any:
    form = await read_form(request)
    raw = split_thetas(text_fields(form, files=tuple(FILES), lists=("prompt", "thetas")))
    params: InterpolationRequest = parse_params(InterpolationRequest, raw)
    out = target(rt, params, "interpolation")
    interpolation_thetas(params.thetas, params.frames)  # 400 for bad thetas before the uploads are read
    images = (await endpoints(form, rt, params))[0] or []
    tensors = {f"image{i}": image_tensor(image) for i, image in enumerate(images)}
    out = sized_for(rt, params, out, images[0].size) if images else out  # the first image's aspect
    return await serve(request, rt, Spec("interpolation", params, out, tensors, ingredients(*images)))

