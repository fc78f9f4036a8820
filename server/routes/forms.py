"""Multipart requests: reading the form, its text fields and files, checking uploaded
images before any work, and describing multipart bodies in OpenAPI."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

import torch
from fastapi import Request
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile

from pipelines.imageio import open_image, to_tensor

from ..errors import APIError, bad_request

if TYPE_CHECKING:
    from ..app import Runtime

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def read_form(request: Request) -> FormData:
    """The request's form (400 if the body is not a well-formed form)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith(FORM_TYPES):
        raise bad_request(None, f"Expected a multipart/form-data body, got content-type {ctype or 'none'!r}.",
                          "invalid_content_type")
    try:
        return await request.form(max_files=8, max_fields=200, max_part_size=64 * 1024)
    except Exception as err:  # noqa: BLE001 - python-multipart raises several kinds
        detail = getattr(err, "detail", None) or str(err) or type(err).__name__
        raise bad_request(None, f"Malformed form body: {detail}", "invalid_form") from None


def text_fields(form: FormData, files: tuple[str, ...], lists: tuple[str, ...] = ()) -> dict[str, Any]:
    """Text fields as a dict for a params model. `name[]` and repeated `name` become lists
    for fields in `lists`; elsewhere a repeated field is an error. File fields are skipped."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(form.keys()):
        name = key[:-2] if key.endswith("[]") else key
        if name in files:
            continue
        values = form.getlist(key)
        if any(isinstance(v, UploadFile) for v in values):
            raise bad_request(name, f"'{name}' must be a text field, not a file.")
        if name in lists:
            out.setdefault(name, []).extend(values)
        elif len(values) > 1 or name in out:
            raise bad_request(name, f"'{name}' was given more than once.")
        else:
            out[name] = values[0]
    return out


def uploads(form: FormData, name: str) -> list[UploadFile]:
    """The files sent as `name` or `name[]` (a text value there is an error)."""
    values = form.getlist(name) + form.getlist(f"{name}[]")
    for v in values:
        if not isinstance(v, UploadFile):
            raise bad_request(name, f"'{name}' must be an uploaded file.")
    return values


def one_upload(form: FormData, name: str, required: bool = True) -> Optional[UploadFile]:
    """The single file `name` (or `name[]`): 400 if missing (when required) or several."""
    files = uploads(form, name)
    if len(files) > 1:
        raise bad_request(name, f"Only one '{name}' is supported by this endpoint; got {len(files)}.")
    if not files and required:
        raise bad_request(name, f"Missing required parameter: '{name}'.", "missing_required_parameter")
    return files[0] if files else None


async def load_image(rt: "Runtime", upload: UploadFile, param: str) -> Image.Image:
    """Read and decode one upload: size limit, format, pixel limit (400 naming param)."""
    limit = rt.settings.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise APIError(400, f"'{param}' must be less than {limit / 2**20:g} MB.", param=param, code="image_too_large")
    return await asyncio.to_thread(open_image, data, param, rt.settings.max_image_pixels)


def square_tensor(img: Image.Image, param: str) -> torch.Tensor:
    """RGB tensor [1, 3, H, W] of an image that must be square."""
    if img.width != img.height:
        raise bad_request(param, f"'{param}' must be square, got {img.width}x{img.height}.", "image_not_square")
    return to_tensor(img)


def multipart_body(model: type[BaseModel], files: dict[str, str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`openapi_extra` describing a multipart body: the model's fields plus binary files
    (`required`: the files that must be present)."""
    schema = model.model_json_schema()
    props = {name: {"type": "string", "format": "binary", "description": doc} for name, doc in files.items()}
    props.update(schema.get("properties", {}))
    body = {"type": "object", "properties": props, "required": list(required) + schema.get("required", [])}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` describing a JSON body validated by `model`."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
