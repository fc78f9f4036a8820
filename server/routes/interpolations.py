"""POST /v1/images/interpolations (extension): frames between two images or two prompts.

Multipart body: two files as `image[]` (or `image` twice), or two text fields `prompt[]`
(or `prompt` twice); `frames` evenly spaced thetas from 0 to 1, or explicit `thetas`
(`thetas[]` repeated, or one comma-separated field); `mode` "slerp" (x_T slerped between
the two inverted latents: the end frames reconstruct the inputs) or "fixed" (one x_T).
Every frame is one image of the response, with its `theta`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from fastapi import APIRouter, Request
from starlette.datastructures import FormData

from pipelines.operations import interpolate

from ..errors import bad_request
from ..schemas import ImagesResponse, InterpolationRequest
from .forms import load_image, multipart_body, read_form, square_tensor, text_fields, uploads
from .common import check_model, meta_for, new_seed, parse_params, parse_size, respond, run, runtime, sampling

if TYPE_CHECKING:
    from ..app import Runtime

router = APIRouter()
Ends = tuple[Optional[list[torch.Tensor]], Optional[list[str]]]

FILES = {"image": "two square images: send the field `image[]` (or `image`) twice"}
DEFAULT_FRAMES = 5


def split_thetas(raw: dict[str, Any]) -> dict[str, Any]:
    """Allow thetas as one comma-separated field ("0,0.5,1")."""
    thetas = raw.get("thetas")
    if thetas is not None:
        raw["thetas"] = [t.strip() for v in thetas for t in str(v).split(",") if t.strip()]
    return raw


def thetas_for(params: InterpolationRequest) -> list[float]:
    """The explicit thetas, or `frames` evenly spaced in [0, 1]."""
    if params.thetas is not None and params.frames is not None:
        raise bad_request("thetas", "Give either 'frames' or 'thetas', not both.")
    if params.thetas is not None:
        return list(params.thetas)
    frames = params.frames or DEFAULT_FRAMES
    return [k / (frames - 1) for k in range(frames)]


async def endpoints(form: FormData, rt: "Runtime", params: InterpolationRequest) -> Ends:
    """(images [1, 3, H, W] x2, None) or (None, prompts x2); 400 otherwise."""
    files, prompts = uploads(form, "image"), params.prompt or []
    if files and prompts:
        raise bad_request("prompt", "Give two images or two prompts, not both.")
    if files:
        if len(files) != 2:
            raise bad_request("image", f"An interpolation needs exactly two images; got {len(files)}.")
        return [square_tensor(await load_image(rt, f, "image"), "image") for f in files], None
    if len(prompts) != 2 or not all(p.strip() for p in prompts):
        raise bad_request("prompt", "An interpolation needs exactly two images or two non-empty prompts.")
    if any(len(p) > 1000 for p in prompts):
        raise bad_request("prompt", "Each prompt must be at most 1000 characters.")
    return None, prompts


@router.post(
    "/images/interpolations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=multipart_body(InterpolationRequest, FILES),
    summary="Interpolate between two images or two prompts in CLIP image-embedding space (extension)",
)
async def create_interpolation(request: Request) -> Any:
    rt = runtime(request)
    form = await read_form(request)
    raw = split_thetas(text_fields(form, files=tuple(FILES), lists=("prompt", "thetas")))
    params: InterpolationRequest = parse_params(InterpolationRequest, raw)
    check_model(rt, params.model)
    size, seed, thetas = parse_size(rt, params.size), new_seed(params.seed), thetas_for(params)
    images, prompts = await endpoints(form, rt, params)
    mode = params.mode or "slerp"
    op = interpolate(rt.pipe, images=images, prompts=prompts, thetas=thetas, mode=mode, seed=seed, size=size,
                     opts=sampling(params))
    meta = meta_for(rt, "interpolation", seed, params, size, mode=mode, thetas=None, frames=len(thetas))
    result = await run(request, rt, op, "interpolation", len(thetas))
    return await respond(request, rt, result, meta, params.response_format)
