"""Request bodies: reading a JSON object or a form (its text fields and files), checking
uploaded images before any work, and describing both kinds of body in OpenAPI."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import torch
from fastapi import Request
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect

from pipelines.imageio import keep_mask, open_image, reduce, to_uint8_tensor

from ..errors import APIError, bad_request
from ..requests.spec import Spec, parse_params, sized_for, target
from ..runtime import Runtime
from ..trust.credentials import Credentials
from .multipart import FieldError, NamingParser

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
FORM_LIMITS = {"max_files": 8, "max_fields": 200, "max_part_size": 64 * 1024}  # a part: one text field


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object (400 saying why otherwise: not UTF-8, not JSON, nested too
    deeply, a number too long, not an object)."""
    body = await request.body()
    try:
        raw = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise bad_request(None, f"The body is not valid UTF-8 (byte {err.start}).", "invalid_json") from None
    except RecursionError:
        raise bad_request(None, "The JSON body is nested too deeply.", "invalid_json") from None
    except ValueError as err:  # json.JSONDecodeError, or an integer over Python's digit limit
        raise bad_request(None, f"The body is not valid JSON: {err}.", "invalid_json") from None
    if not isinstance(raw, dict):
        raise bad_request(None, f"The body must be a JSON object, got {type(raw).__name__}.", "invalid_json")
    return raw


async def read_form(request: Request) -> FormData:
    """The request's form (400 if the body is not a well-formed form; ClientDisconnect if
    the client goes away before its end)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith(FORM_TYPES):
        raise bad_request(None, f"Expected a multipart/form-data body, got content-type {ctype or 'none'!r}.",
                          "invalid_content_type")
    try:
        if ctype.startswith("multipart/form-data"):
            return await NamingParser(request.headers, request.stream(), **FORM_LIMITS).parse()
        return await request.form(**FORM_LIMITS)
    except FieldError as err:
        raise bad_request(err.field, err.message, err.code) from None
    except ClientDisconnect:
        raise
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


@dataclass(frozen=True)
class Upload:
    """A decoded upload, reduced at once to what the model uses (`Runtime.input_side`):
    what a queued job holds of it is at most that many pixels, in uint8."""

    image: Image.Image  # longer side at most the runtime's input side
    size: tuple[int, int]  # (width, height) as uploaded
    param: str
    ingredient: Optional[bytes] = None  # when the server signs: the file as a C2PA ingredient archive


# Uploads decode on these two threads only: a decode holds the full image (4 bytes a pixel,
# up to max_image_pixels) until it is reduced, and the allocator keeps what a thread freed
# for that thread's next decode. Two threads bound both the transient and what stays.
DECODERS = ThreadPoolExecutor(2, thread_name_prefix="decode")


async def load_image(rt: Runtime, upload: UploadFile, param: str, index: Optional[int] = 0) -> Upload:
    """Read, check and decode one upload, and reduce it: size limit, format, pixel limit
    (400 naming param). With C2PA credentials, the file is also made the request's
    ingredient number `index` (server/trust/credentials.py; None: no ingredient, a mask)."""
    limit = rt.settings.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise APIError(400, f"'{param}' must be less than {limit / 2**20:g} MB.", param=param, code="image_too_large")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(DECODERS, _decode, data, param, rt.settings.max_image_pixels, rt.input_side,
                                      rt.credentials, index)


def _decode(data: bytes, param: str, max_pixels: int, side: int, credentials: Optional[Credentials],
            index: Optional[int]) -> Upload:
    img = open_image(data, param, max_pixels)
    small = reduce(img, side)
    ingredient = None
    if credentials is not None and index is not None:
        ingredient = credentials.ingredient(data, img.format.lower(), index, small)
    return Upload(small, img.size, param, ingredient)


def ingredients(*uploads: Upload) -> tuple[bytes, ...]:
    """The uploads' C2PA ingredient archives, in order (none when the server does not sign)."""
    return tuple(u.ingredient for u in uploads if u.ingredient is not None)


def image_tensor(upload: Upload) -> torch.Tensor:
    """RGB tensor [1, 3, h, w] uint8 of an upload, of any aspect (the operation centre-crops
    it to the output's, pipelines/operations.py `check_image`)."""
    return to_uint8_tensor(upload.image)


def edit_mask(image: Upload, mask: Optional[Upload]) -> torch.Tensor:
    """keep [1, 1, h, w] (1 = keep) of an edit: from the mask, which must have the image's
    size as uploaded (then both were reduced to the same size), or from the image's own alpha."""
    if mask is not None and mask.size != image.size:
        raise bad_request("mask", f"'mask' is {mask.size[0]}x{mask.size[1]} but the image is "
                                  f"{image.size[0]}x{image.size[1]}")
    return keep_mask(image.image, mask.image if mask is not None else None)


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


async def image_spec(request: Request, rt: Runtime, model: type[BaseModel], kind: str) -> Spec:
    """The spec of a multipart request with one `image` upload and `model`'s fields (the
    output's size, unless the request names one, follows the image's aspect)."""
    form = await read_form(request)
    params = parse_params(model, text_fields(form, files=("image",)))
    out = target(rt, params, kind)
    image = await load_image(rt, one_upload(form, "image"), "image")
    return Spec(kind, params, sized_for(rt, params, out, image.size), {"image": image_tensor(image)},
                ingredients(image))
