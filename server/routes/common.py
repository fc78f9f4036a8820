"""What every image endpoint shares: request parsing helpers, submitting an operation to
the engine and awaiting it (cancelled when the client goes away), and the response."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from fastapi import Request
from pydantic import BaseModel, ValidationError

from pipelines.operations import OpResult
from pipelines.unclip import Operation, Sampling

from ..engine import Job, JobCancelled, Progress
from ..errors import APIError, bad_request, from_exception, from_validation
from ..images import ImageMeta, encode_pngs, image_items, thetas_of
from ..schemas import QUALITY_NOOP, UNSUPPORTED, ImagesResponse
from ..url_store import StoreTooSmall

if TYPE_CHECKING:
    from ..app import Runtime

log = logging.getLogger(__name__)

# Names the official client may send for `model`; all of them mean this server's model.
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2",
                 "chatgpt-image-latest", "unclip")


def runtime(request: Request) -> "Runtime":
    """The app's runtime, refusing work (503) while not ready or draining."""
    rt = request.app.state.runtime
    rt.require_ready()
    return rt


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


def check_model(rt: "Runtime", model: Optional[str]) -> None:
    """Accept this model's name, 'unclip' and the OpenAI image model names."""
    if model is not None and model != rt.model_name and model not in OPENAI_MODELS and not model.startswith("gpt-image"):
        raise APIError(400, f"The model '{model}' does not exist; this server serves '{rt.model_name}'.",
                       param="model", code="model_not_found")


def parse_size(rt: "Runtime", size: Optional[str]) -> int:
    """'WxH' (square, one of the model's sizes) -> the side; None or 'auto' -> the largest."""
    if size is None or size == "auto":
        return max(rt.sizes)
    width, _, height = size.lower().partition("x")
    allowed = [f"{s}x{s}" for s in rt.sizes]
    if not (width.isdigit() and height.isdigit()) or width != height or int(width) not in rt.sizes:
        raise bad_request("size", f"'{size}' is not a supported size. Supported: {allowed}.")
    return int(width)


def sampling(params: BaseModel) -> Sampling:
    """The per-request sampling settings from the extension fields present on params."""
    fields = ("prior_steps", "prior_guidance", "decoder_steps", "decoder_guidance", "upsampler_steps", "best_of")
    return Sampling(**{f: getattr(params, f, None) for f in fields})


def new_seed(seed: Optional[int]) -> int:
    """The request's seed, or a random one (reported in the PNG chunks)."""
    return seed if seed is not None else secrets.randbelow(2**31)


async def cancel_on_disconnect(request: Request, job: Job) -> None:
    """Wait for the client to go away, then cancel its job."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            if not job.future.done():
                log.info("client went away: cancelling job %s", job.id)
                job.cancel()
            return


def submit(rt: "Runtime", op: Operation, kind: str, images: int,
           on_progress: Optional[Callable[[Progress], None]] = None) -> Job:
    """Hand an operation to the engine (QueueFull -> 429, EngineStopped -> 503)."""
    return rt.engine.submit(op, kind=kind, on_progress=on_progress, images=images)


async def await_job(request: Request, job: Job) -> OpResult:
    """The job's result; a client disconnect cancels it; failures become API errors."""
    watcher = asyncio.create_task(cancel_on_disconnect(request, job))
    try:
        return await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        if job.future.cancelled() and not asyncio.current_task().cancelling():
            raise job_error(request, job, JobCancelled()) from None
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI-shaped error
        raise job_error(request, job, exc) from None
    finally:
        watcher.cancel()
        if not job.future.done():
            job.cancel()


def job_error(request: Request, job: Job, exc: Exception) -> APIError:
    """Map a job's exception to an API error, logging failures with their request id."""
    err = from_exception(exc)
    if err.status >= 500:
        rid = request.scope.get("state", {}).get("request_id", "-")
        log.error("job %s (%s) failed: %s", job.id, rid, err.code, exc_info=exc if err.status == 500 else None)
    return err


async def run(request: Request, rt: "Runtime", op: Operation, kind: str, images: int) -> OpResult:
    """Submit and await an operation."""
    return await await_job(request, submit(rt, op, kind, images))


async def respond(request: Request, rt: "Runtime", result: OpResult, meta: ImageMeta,
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


def meta_for(rt: "Runtime", operation: str, seed: int, params: BaseModel, size: int, **extra: Any) -> ImageMeta:
    """The PNG metadata of a request: its fields (not user ids) plus the effective size."""
    skip = {"user", "safety_identifier", "response_format", "stream", "model", "seed", "quality"}
    values = {k: v for k, v in params.model_dump().items() if k not in skip}
    values.update(size=f"{size}x{size}", **extra)
    return ImageMeta(rt.model_name, operation, seed, values)
