"""A request with everything fixed: each route reads its body into a params model, fixes
everything about the request (model, limits, size, seed, file format, quality, the uploads
reduced to tensors) into a `Spec`, and hands it to `serve` (server/api/serve.py):

    params = parse_params(Model, raw)          # unsupported fields and bad values -> 400
    out = target(rt, params, kind)             # model, limits, size, seed, file format, quality
    return await serve(request, rt, Spec(kind, params, out, tensors))

A spec's plan (server/requests/plans.py) is built from it in this process, and, with the
global queue (Redis), on whichever replica runs the job, from the spec stored as JSON
(`spec_json`, `spec_from_json`; `PARAMS` names each kind's params model).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from pipelines.errors import InvalidInput
from pipelines.sizes import Size
from pipelines.unclip import Sampling

from ..errors import APIError, bad_request, from_validation
from ..runtime import Runtime
from .admission import check_limits
from .images import DEFAULT_FRAME_MS, FileFormat
from .quality import STEP_SCALE, Preset, preset
from .schemas import (
    UNSUPPORTED,
    EditRequest,
    GenerationRequest,
    InterpolationRequest,
    TextDiffRequest,
    VariationRequest,
)

# Names the official client may send for `model`; all of them mean this server's model.
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2",
                 "chatgpt-image-latest", "unclip")


GIF_KINDS = ("generation", "interpolation", "text_diff")  # the operations whose images are frames


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(Sampling))


SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")  # ASCII digits only: "²x²" is no size


@dataclass(frozen=True)
class Target:
    """What a request's images will be and how they are delivered: side in pixels, seed of
    the first image, file format, quality preset, `url` or `b64_json`."""

    size: Size  # (width, height)
    seed: int
    fmt: FileFormat = FileFormat()
    quality: Preset = "medium"
    response_format: str = "url"


@dataclass
class Spec:
    """A request with everything fixed: its operation kind, validated params, target, the
    uploads as tensors and, when the server signs, as C2PA ingredient archives (in upload
    order, server/trust/credentials.py). Any replica rebuilds the same plan from it
    (server/requests/plans.py)."""

    kind: str
    params: BaseModel
    out: Target
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    ingredients: tuple[bytes, ...] = ()


# Each kind of request and its params model (the kinds of `Spec.kind` and of server/requests/plans.py).
PARAMS: dict[str, type[BaseModel]] = {"generation": GenerationRequest, "edit": EditRequest,
                                      "variation": VariationRequest, "interpolation": InterpolationRequest,
                                      "text_diff": TextDiffRequest}


def spec_json(spec: Spec, **extra: Any) -> str:
    """The spec (and `extra` JSON fields) as JSON, for the global queue."""
    tensors = {name: {"dtype": str(t.numpy().dtype), "shape": list(t.shape),
                      "data": base64.b64encode(t.contiguous().numpy().tobytes()).decode("ascii")}
               for name, t in spec.tensors.items()}
    ingredients = [base64.b64encode(a).decode("ascii") for a in spec.ingredients]
    return json.dumps({"kind": spec.kind, "params": spec.params.model_dump(mode="json", exclude_unset=True),
                       "out": dataclasses.asdict(spec.out), "tensors": tensors, "ingredients": ingredients, **extra},
                      separators=(",", ":"))


def spec_from_json(text: str) -> tuple[Spec, dict[str, Any]]:
    """A spec from `spec_json`'s text, and its extra fields."""
    raw = json.loads(text)
    kind, params, out, tensors = raw.pop("kind"), raw.pop("params"), raw.pop("out"), raw.pop("tensors")
    ingredients = tuple(base64.b64decode(a) for a in raw.pop("ingredients", []))
    model = PARAMS[kind]
    target_ = Target(**{**out, "fmt": FileFormat(**out["fmt"])})
    arrays = {name: torch.from_numpy(np.frombuffer(base64.b64decode(t["data"]), t["dtype"]).reshape(t["shape"]).copy())
              for name, t in tensors.items()}
    return Spec(kind, model.model_validate(params), target_, arrays, ingredients), raw


def parse_params(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    """Validate raw fields with `model`; unsupported OpenAI fields and bad values -> 400."""
    for name, instead in UNSUPPORTED.items():
        if name in raw:
            raise bad_request(name, f"'{name}' is not supported by this server's model (unCLIP): {instead}.",
                              "unsupported_parameter")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise from_validation(err.errors()) from None


def target(rt: Runtime, params: BaseModel, kind: str) -> Target:
    """Check the requested model and the per-request limits; the output size, the seed
    (random if none was given), the file format, the quality preset, the response format
    (`gpt-image-*` models answer in base64 as OpenAI's do; others with URLs)."""
    check_model(rt, params.model)
    check_limits(rt, params)
    seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
    gpt = (params.model or "").startswith(("gpt-image", "chatgpt-image"))
    return Target(parse_size(rt, params.size), seed, file_format(params, kind), preset(params.quality),
                  params.response_format or ("b64_json" if gpt else "url"))


def sized_for(rt: Runtime, params: BaseModel, out: Target, image: Size) -> Target:
    """`out`, where the request names no size (None or 'auto'), at the size the model makes
    nearest the aspect of an uploaded image of size (W, H) (`SizeRule.for_aspect`)."""
    if params.size not in (None, "auto"):
        return out
    return replace(out, size=rt.size_rule.for_aspect(image))


def file_format(params: BaseModel, kind: str) -> FileFormat:
    """The files to write: 400 for what cannot be honoured (transparency, compression of
    PNG or GIF, GIF for one image or streamed, GIF fields without GIF)."""
    fmt = params.output_format or "png"
    if params.background == "transparent":
        raise bad_request("background", "This model draws opaque images only; use background 'opaque' or 'auto'.",
                          "unsupported_value")
    if params.output_compression is not None and fmt not in ("jpeg", "webp"):
        raise bad_request("output_compression", "'output_compression' applies to jpeg and webp output only.",
                          "unsupported_value")
    gif_fields = [f for f in ("frame_count", "frame_duration_ms") if getattr(params, f, None) is not None]
    if fmt != "gif" and gif_fields:
        raise bad_request(gif_fields[0], f"'{gif_fields[0]}' needs output_format 'gif'.", "unsupported_value")
    if fmt == "gif" and (kind not in GIF_KINDS or getattr(params, "stream", None)):
        raise bad_request("output_format", "GIF output is for generations, interpolations and text diffs, "
                                           "and does not stream.", "unsupported_value")
    if fmt == "gif" and getattr(params, "n", 1) > 1:
        raise bad_request("n", "A GIF is one image: ask for n=1 and frame_count frames.", "unsupported_value")
    return FileFormat(fmt, params.output_compression, getattr(params, "frame_duration_ms", None) or DEFAULT_FRAME_MS)


def check_model(rt: Runtime, model: Optional[str]) -> None:
    """Accept this model's name, 'unclip' and the OpenAI image model names."""
    ours = model is None or model == rt.model_name or model in OPENAI_MODELS or model.startswith("gpt-image")
    if not ours:
        raise APIError(400, f"The model '{model}' does not exist; this server serves '{rt.model_name}'.",
                       param="model", code="model_not_found")


def parse_size(rt: Runtime, size: Optional[str]) -> Size:
    """'WxH' (one the model makes, pipelines/sizes.py) -> (width, height); None or 'auto' ->
    the model's default."""
    if size is None or size == "auto":
        return rt.size_rule.default
    match = SIZE.fullmatch(size.lower())
    if match is None:
        raise bad_request("size", f"'{size}' is not a supported size. {rt.size_rule.describe()}")
    try:
        return rt.size_rule.check((int(match[1]), int(match[2])))
    except InvalidInput as err:
        raise bad_request("size", err.message) from None


def sampling(params: BaseModel) -> Sampling:
    """The per-request sampling settings: every `Sampling` field the params model has and
    the request set (None keeps the model's default)."""
    given = {f: getattr(params, f, None) for f in SAMPLING_FIELDS}
    scale = STEP_SCALE[preset(getattr(params, "quality", None))]
    return Sampling(**{f: v for f, v in given.items() if v is not None}, step_scale=scale)
