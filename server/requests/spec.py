"""What every image endpoint shares. Each route reads its body into a params model, fixes
everything about the request (model, limits, size, seed, file format, quality, the uploads
reduced to tensors) into a `Spec`, and hands it to `serve`:

    params = parse_params(Model, raw)          # unsupported fields and bad values -> 400
    out = target(rt, params, kind)             # model, limits, size, seed, file format, quality
    return await serve(request, rt, Spec(kind, params, out, tensors))

The route's builder (registered with `@builds(kind, Model)`) turns a spec into its `Plan`
(operation, work, texts): in this process, and, with the global queue (Redis), on whichever
replica runs the job, from the spec stored as JSON (`spec_json`, `spec_from_json`).

`serve` refuses at once (400) an operation whose estimated run time exceeds the deadline,
runs it on the engine and answers with OpenAI's images response (with `size`, `quality`,
`output_format`, `background` and `usage`), or, for `stream=true`, with Server-Sent Events,
or, with `Prefer: respond-async`, with 202 and a job to poll (server/delivery/follow.py).
The three share `prepare` (admission, metadata, usage, headers) and `images_body` (the
result's images response, built once). With Redis, a synchronous or async request goes to
the global queue instead (`enqueue`; server/claimer.py runs it on some replica) and
a synchronous one waits for its record's end (`await_record`); `stream=true` runs here.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from pipelines.operations import OpResult
from pipelines.unclip import Operation, Sampling

from ..api.auth import key_owner
from ..api.bodies import load_image, one_upload, read_form, square_tensor, text_fields
from ..api.running import await_job, submit
from ..delivery.failures import record_error
from ..delivery.follow import Following, accepted, check_delivery, prefers_async, start
from ..delivery.progress import Delivery, Partials, progress_queue, stream_response
from ..engine.core import Progress, QueueFull
from ..engine.job import new_job_id
from ..errors import APIError, StoreUnavailable, bad_request, from_validation
from ..runtime import Runtime
from ..state.records import EVENT_PREFIX as JOB_EVENT_PREFIX
from ..state.records import FINAL, JobRecord
from ..state.url_store import StoreTooSmall
from .admission import admit, check_limits
from .images import DEFAULT_FRAME_MS, FileFormat, ImageMeta, encode, image_items, thetas_of
from .quality import STEP_SCALE, Preset, preset
from .schemas import UNSUPPORTED, ImagesResponse, Usage
from .usage import truncation, usage

log = logging.getLogger(__name__)

# Names the official client may send for `model`; all of them mean this server's model.
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2",
                 "chatgpt-image-latest", "unclip")
# Request fields not written into the PNGs: ids of users, transport choices, and what the
# images carry anyway (seed per image, theta per frame).
NOT_RECORDED = frozenset({"user", "safety_identifier", "response_format", "stream", "model", "seed", "thetas",
                          "output_format", "output_compression", "background", "moderation", "partial_images",
                          "frame_duration_ms", "webhook_url"})
GIF_KINDS = ("generation", "interpolation", "text_diff")  # the operations whose images are frames
SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(Sampling))
SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")  # ASCII digits only: "²x²" is no size
# The SSE event prefix of the operations that stream (server/delivery/progress.py).
STREAM_PREFIX = {"generation": "image_generation", "edit": "image_edit"}
TERMINAL = frozenset(f"{JOB_EVENT_PREFIX}.{status}" for status in FINAL)
WAIT_S = 5.0  # one wait for a queued synchronous job's next event


@dataclass(frozen=True)
class Target:
    """What a request's images will be and how they are delivered: side in pixels, seed of
    the first image, file format, quality preset, `url` or `b64_json`."""

    size: int
    seed: int
    fmt: FileFormat = FileFormat()
    quality: Preset = "medium"
    response_format: str = "url"


@dataclass
class Plan:
    """What a route hands to `serve`: its operation and what is known of it before it runs."""

    op: Operation
    kind: str
    opts: Sampling  # what the operation samples with (recorded in the images)
    work: dict[str, int]  # track-steps per stage (pipelines.operations.work)
    texts: Sequence[str] = ()  # the prompts CLIP encodes (usage, truncation notice)
    input_images: int = 0  # the images CLIP encodes (usage)


@dataclass
class Spec:
    """A request with everything fixed: its operation kind, validated params, target, and
    uploads as tensors. Any replica rebuilds the same plan from it (`plan_of`)."""

    kind: str
    params: BaseModel
    out: Target
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


Builder = Callable[[Runtime, Any, Target, dict[str, torch.Tensor]], Plan]
BUILDERS: dict[str, tuple[type[BaseModel], Builder]] = {}


def builds(kind: str, model: type[BaseModel]) -> Callable[[Builder], Builder]:
    """Register the function that turns a spec of `kind` (params of `model`) into its plan."""
    def register(fn: Builder) -> Builder:
        BUILDERS[kind] = (model, fn)
        return fn
    return register


def plan_of(rt: Runtime, spec: Spec) -> Plan:
    """The spec's plan (operation, work, texts), by its kind's builder."""
    return BUILDERS[spec.kind][1](rt, spec.params, spec.out, spec.tensors)


def spec_json(spec: Spec, **extra: Any) -> str:
    """The spec (and `extra` JSON fields) as JSON, for the global queue."""
    tensors = {name: {"dtype": str(t.numpy().dtype), "shape": list(t.shape),
                      "data": base64.b64encode(t.contiguous().numpy().tobytes()).decode("ascii")}
               for name, t in spec.tensors.items()}
    return json.dumps({"kind": spec.kind, "params": spec.params.model_dump(mode="json", exclude_unset=True),
                       "out": dataclasses.asdict(spec.out), "tensors": tensors, **extra}, separators=(",", ":"))


def spec_from_json(text: str) -> tuple[Spec, dict[str, Any]]:
    """A spec from `spec_json`'s text, and its extra fields."""
    raw = json.loads(text)
    kind, params, out, tensors = raw.pop("kind"), raw.pop("params"), raw.pop("out"), raw.pop("tensors")
    model = BUILDERS[kind][0]
    target_ = Target(**{**out, "fmt": FileFormat(**out["fmt"])})
    arrays = {name: torch.from_numpy(np.frombuffer(base64.b64decode(t["data"]), t["dtype"]).reshape(t["shape"]).copy())
              for name, t in tensors.items()}
    return Spec(kind, model.model_validate(params), target_, arrays), raw


async def image_spec(request: Request, rt: Runtime, model: type[BaseModel], kind: str) -> Spec:
    """The spec of a multipart request with one square `image` upload and `model`'s fields."""
    form = await read_form(request)
    params = parse_params(model, text_fields(form, files=("image",)))
    out = target(rt, params, kind)
    image = square_tensor(await load_image(rt, one_upload(form, "image"), "image"))
    return Spec(kind, params, out, {"image": image})


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
    scale = STEP_SCALE[preset(getattr(params, "quality", None))]
    return Sampling(**{f: v for f, v in given.items() if v is not None}, step_scale=scale)


@dataclass
class Prepared:
    """What `prepare` knows of a plan before it runs: its estimated run time alone, the
    files' metadata, the usage, and the answer's headers (the truncation notice)."""

    cost_s: Optional[float]
    meta: ImageMeta
    usage: Usage
    headers: dict[str, str]


def prepare(rt: Runtime, params: BaseModel, out: Target, plan: Plan, *, admitted: bool = False,
            cost_s: Optional[float] = None) -> Prepared:
    """Admission (400 for what cannot finish within the deadline), the files' metadata, the
    usage and the headers: what every way of answering shares. A claimed job of the global
    queue was `admitted` where it was accepted, with its `cost_s`."""
    if not admitted:
        cost_s = admit(rt, params, plan.work)
    clip = rt.pipe.stack.clip
    cut = truncation(clip, plan.texts)
    headers = {"x-prompt-truncated": cut} if cut else {}
    return Prepared(cost_s, meta_for(rt, plan, out, params, cut), usage(clip, plan.texts, plan.input_images), headers)


async def serve(request: Request, rt: Runtime, spec: Spec) -> Any:
    """Run the spec's operation and answer: the images response; SSE when params ask to
    stream; 202 and a job with `Prefer: respond-async` (server/delivery/follow.py). With
    the global queue (Redis), all but streams run on whichever replica claims them."""
    params, out, plan = spec.params, spec.out, plan_of(rt, spec)
    background = prefers_async(request)
    webhook_url = check_delivery(rt, params, background)
    ready = prepare(rt, params, out, plan)
    base = rt.settings.public_url or str(request.base_url)
    if rt.shared.queue is not None and not getattr(params, "stream", None):
        return await enqueue(request, rt, spec, ready, base, background, webhook_url)
    if not background and not getattr(params, "stream", None):
        result = await await_job(request, submit(rt, plan.op, plan.kind, cost_s=ready.cost_s))
        return JSONResponse(await images_body(rt, result, ready, out, base), headers=ready.headers)
    prefix = JOB_EVENT_PREFIX if background else STREAM_PREFIX[plan.kind]
    following, queue, hook = follow_with(rt, params, out, plan, ready, prefix, base)
    job = submit(rt, plan.op, plan.kind, on_progress=hook, cost_s=ready.cost_s)
    if not background:
        return stream_response(request, job, queue, following.delivery, ready.headers)
    return await start(request, rt, job, queue, following, webhook_url, ready.headers)


def follow_with(rt: Runtime, params: BaseModel, out: Target, plan: Plan, ready: Prepared, prefix: str,
                base_url: str) -> tuple[Following, asyncio.Queue, Callable[[Progress], None]]:
    """How a job is followed (its events named `prefix`, the partial images params ask for,
    the images response of its result under `base_url`), the queue its progress reports go
    to, and the engine's hook that fills it."""
    partials = Partials(getattr(params, "partial_images", None) or 0, rt.pipe.upsampler_count(out.size))
    delivery = Delivery(ready.meta, out.size, out.fmt, out.quality, ready.usage, prefix)
    queue, hook = progress_queue(partials)
    build = functools.partial(images_body, rt, ready=ready, out=out, base_url=base_url)
    return Following(plan.work, delivery, build), queue, hook


async def enqueue(request: Request, rt: Runtime, spec: Spec, ready: Prepared, base_url: str, background: bool,
                  webhook_url: Optional[str]) -> Any:
    """Put the job in the global queue (429 with a Retry-After from the global depth when
    `queue_size` jobs wait already); answer 202 with the job, or wait for its end. A
    synchronous request's record is not listed, and goes once answered."""
    owner = key_owner(request.headers.get("authorization"), rt.settings.keys)
    record = JobRecord(new_job_id(), spec.kind, int(time.time()), owner=owner, webhook_url=webhook_url,
                       listed=background)
    text = spec_json(spec, base_url=base_url, cost_s=ready.cost_s, accepted_at=time.time())
    await rt.jobs.store.put(record)
    queued, depth = await rt.shared.queue.push(record.id, text, ready.cost_s)
    if not queued:
        await rt.jobs.store.delete(record.id)
        raise QueueFull(rt.engine.retry_after(max(1, depth - rt.settings.queue_size + 1)), depth)
    rt.wake_claimer()  # this replica takes it at once if it has a free slot
    if background:
        return await accepted(rt, record, ready.headers)
    rt.waiting += 1
    try:
        return JSONResponse(await await_record(request, rt, record.id), headers=ready.headers)
    finally:
        rt.waiting -= 1
        try:
            await rt.jobs.store.delete(record.id)
        except StoreUnavailable:
            pass


async def await_record(request: Request, rt: Runtime, job_id: str) -> dict[str, Any]:
    """The images response of a queued synchronous job, wherever it runs: its events are
    followed until the terminal one (a client disconnect cancels it); its failure is raised."""
    watcher = asyncio.create_task(cancel_record_on_disconnect(request, rt, job_id))
    limit = time.monotonic() + rt.settings.default_deadline_s + 3 * rt.settings.lease_s + 30
    after = 0
    try:
        while time.monotonic() < limit:
            events = await rt.jobs.store.events_after(job_id, after, wait_s=WAIT_S)
            after = events[-1].id if events else after
            if events and not any(e.type in TERMINAL for e in events):
                continue
            record = await rt.jobs.store.get(job_id)
            if record is None:
                raise APIError(500, "The job's record was lost.", "server_error", code="internal_error")
            if record.finished:
                if record.status == "completed" and record.result is not None:
                    return record.result
                raise record_error(record)
        raise APIError(504, "The request's deadline passed before the images were ready.", "server_error",
                       code="deadline_exceeded")
    finally:
        watcher.cancel()


async def cancel_record_on_disconnect(request: Request, rt: Runtime, job_id: str) -> None:
    """Wait for the client to go away, then cancel its queued job (wherever it runs)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            record = await rt.jobs.store.get(job_id)
            if record is not None and not record.finished:
                log.info("client went away: cancelling job %s", job_id)
                await rt.jobs.cancel(record)
            return


async def images_body(rt: Runtime, result: OpResult, ready: Prepared, out: Target, base_url: str) -> dict[str, Any]:
    """The images response of a result, as JSON data: the files encoded (in a worker
    thread) with their metadata, then stored for URLs (under `base_url`) or in base64."""
    files = await asyncio.to_thread(encode, result, ready.meta, out.fmt)
    try:
        data = await image_items(files, thetas_of(result), out.response_format, rt.store, base_url, out.fmt)
    except StoreTooSmall as err:
        log.error("%s", err)
        raise APIError(500, "The image is too large for the URL store; use response_format=b64_json.",
                       "server_error", code="url_store_too_small") from None
    body = ImagesResponse(created=int(time.time()), data=data, size=f"{out.size}x{out.size}", quality=out.quality,
                          output_format=out.fmt.format, background="opaque", usage=ready.usage)
    return body.model_dump(exclude_none=True)


def meta_for(rt: Runtime, plan: Plan, out: Target, params: BaseModel, cut: Optional[str] = None) -> ImageMeta:
    """The files' metadata: the sampling settings in effect, the request's fields (not user
    ids), the size, the quality preset and, if the prompt was cut, what was kept."""
    values = rt.pipe.settings_of(plan.opts)
    values |= {k: v for k, v in params.model_dump().items() if k not in NOT_RECORDED and v is not None}
    values.update(size=f"{out.size}x{out.size}", quality=out.quality, prompt_truncated=cut)
    return ImageMeta(rt.model_name, plan.kind, out.seed, values)
