"""What every image endpoint shares. Each route reads its body into a params model, builds
its operation, and hands both to `serve`:

    params = parse_params(Model, raw)          # unsupported fields and bad values -> 400
    out = target(rt, params)                   # model name and limits checked, size and seed chosen
    op = operation(rt.pipe, ..., seed=out.seed, size=out.size, opts=sampling(params))
    return await serve(request, rt, params, op, kind, out, work(rt.pipe, out.size, ...))

`serve` refuses at once (400) an operation whose estimated run time exceeds the deadline,
runs it on the engine and answers with OpenAI's images response, or, for `stream=true`,
with Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import Request
from pydantic import BaseModel, ValidationError

from pipelines.operations import OpResult
from pipelines.stage_keys import DECODER, PRIOR, UPSAMPLER
from pipelines.unclip import Operation, Sampling

from ..errors import APIError, bad_request, from_validation
from ..images import ImageMeta, encode_pngs, image_items, thetas_of
from ..runtime import Runtime
from ..schemas import QUALITY_NOOP, UNSUPPORTED, ImagesResponse
from ..url_store import StoreTooSmall
from .running import await_job, submit
from .stream import progress_queue, stream_response

log = logging.getLogger(__name__)

# Names the official client may send for `model`; all of them mean this server's model.
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2",
                 "chatgpt-image-latest", "unclip")
# Request fields not written into the PNGs: ids of users, transport choices, and what the
# images carry anyway (seed per image, theta per frame).
NOT_RECORDED = frozenset({"user", "safety_identifier", "response_format", "stream", "model", "seed", "quality",
                          "thetas"})
SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(Sampling))
SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")  # ASCII digits only: "²x²" is no size
# The request field of each stage's steps.
STEP_FIELDS = {PRIOR: "prior_steps", DECODER: "decoder_steps", UPSAMPLER: "upsampler_steps"}
# The SSE event prefix of the operations that stream (server/routes/stream.py).
STREAM_PREFIX = {"generation": "image_generation", "edit": "image_edit"}


@dataclass(frozen=True)
class Target:
    """What a request's images will be: side in pixels, and the seed of the first image."""

    size: int
    seed: int


def parse_params(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    """Validate raw fields with `model`; unsupported OpenAI fields and bad values -> 400."""
    for name in UNSUPPORTED:
        if name in raw:
            raise bad_request(name, f"'{name}' is not supported by this server's model (unCLIP); remove it.",
                              "unsupported_parameter")
    quality = raw.get("quality")
    if quality is not None and quality not in QUALITY_NOOP:
        raise bad_request("quality", f"'quality' must be one of {list(QUALITY_NOOP)} for this model, got {quality!r}.",
                          "unsupported_parameter")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise from_validation(err.errors()) from None


def target(rt: Runtime, params: BaseModel) -> Target:
    """Check the requested model and the per-request limits; the output size and the seed
    (random if none was given)."""
    check_model(rt, params.model)
    check_limits(rt, params)
    return Target(parse_size(rt, params.size), params.seed if params.seed is not None else secrets.randbelow(2**31))


def check_model(rt: Runtime, model: Optional[str]) -> None:
    """Accept this model's name, 'unclip' and the OpenAI image model names."""
    ours = model is None or model == rt.model_name or model in OPENAI_MODELS or model.startswith("gpt-image")
    if not ours:
        raise APIError(400, f"The model '{model}' does not exist; this server serves '{rt.model_name}'.",
                       param="model", code="model_not_found")


def check_limits(rt: Runtime, params: BaseModel) -> None:
    """Steps per stage and best_of within the server's bounds (settings)."""
    limits = {f: rt.settings.max_steps for f in STEP_FIELDS.values()} | {"best_of": rt.settings.max_best_of}
    for name, limit in limits.items():
        value = getattr(params, name, None)
        if value is not None and value > limit:
            raise bad_request(name, f"'{name}' must be at most {limit} on this server, got {value}.")


def parse_size(rt: Runtime, size: Optional[str]) -> int:
    """'WxH' (square, one of the model's sizes) -> the side; None or 'auto' -> the largest."""
    if size is None or size == "auto":
        return max(rt.sizes)
    match = SIZE.fullmatch(size.lower())
    if match is None or match[1] != match[2] or int(match[1]) not in rt.sizes:
        allowed = [f"{s}x{s}" for s in rt.sizes]
        raise bad_request("size", f"'{size}' is not a supported size. Supported: {allowed}.")
    return int(match[1])


def sampling(params: BaseModel) -> Sampling:
    """The per-request sampling settings: every `Sampling` field the params model has and
    the request set (None keeps the model's default)."""
    given = {f: getattr(params, f, None) for f in SAMPLING_FIELDS}
    return Sampling(**{f: v for f, v in given.items() if v is not None})


async def serve(request: Request, rt: Runtime, params: BaseModel, op: Operation, kind: str, out: Target,
                work: dict[str, int]) -> Any:
    """Run the operation and answer: the images response, or SSE when params ask to stream.
    `work`: its track-steps per stage (`pipelines.operations.work`), for the admission check."""
    cost_s = admit(rt, params, work)
    meta = meta_for(rt, kind, out, params)
    if getattr(params, "stream", None):
        queue, hook = progress_queue()
        job = submit(rt, op, kind, on_progress=hook, cost_s=cost_s)
        return stream_response(request, job, queue, meta, STREAM_PREFIX[kind], out.size)
    result = await await_job(request, submit(rt, op, kind, cost_s=cost_s))
    return await respond(request, rt, result, meta, params.response_format)


def admit(rt: Runtime, params: BaseModel, work: dict[str, int]) -> Optional[float]:
    """The operation's estimated run time alone (None before the engine has measured its
    stages). With `admission_check`, a request that cannot finish within the deadline even
    alone is refused: 400 naming the field that costs most."""
    cost_s, deadline_s = rt.engine.estimate(work), rt.settings.default_deadline_s
    if cost_s is None or cost_s <= deadline_s or not rt.settings.admission_check:
        return cost_s
    stage = max(work, key=lambda k: work[k] * rt.engine.step_s(k))
    field = STEP_FIELDS[stage.partition(".")[0]]
    param = field if getattr(params, field, None) is not None or not getattr(params, "n", 1) > 1 else "n"
    raise bad_request(param, f"This request would take about {cost_s:.0f} s, more than the {deadline_s:g} s "
                             f"deadline (mostly in the {stage} stage); ask for fewer images or steps.",
                      "request_too_costly")


async def respond(request: Request, rt: Runtime, result: OpResult, meta: ImageMeta,
                  response_format: Optional[str]) -> ImagesResponse:
    """Encode the result's images (in a worker thread) and build the response."""
    pngs = await asyncio.to_thread(encode_pngs, result, meta)
    base = rt.settings.public_url or str(request.base_url)
    try:
        data = image_items(pngs, thetas_of(result), response_format or "url", rt.store, base)
    except StoreTooSmall as err:
        log.error("%s", err)
        raise APIError(500, "The image is too large for the URL store; use response_format=b64_json.",
                       "server_error", code="url_store_too_small") from None
    return ImagesResponse(created=int(time.time()), data=data)


def meta_for(rt: Runtime, operation: str, out: Target, params: BaseModel) -> ImageMeta:
    """The PNG metadata of a request: its fields (not user ids) plus the effective size."""
    values = {k: v for k, v in params.model_dump().items() if k not in NOT_RECORDED}
    values["size"] = f"{out.size}x{out.size}"
    return ImageMeta(rt.model_name, operation, out.seed, values)
