"""What every way of answering a plan shares (in this process, or on the replica that
claims it from the global queue): `prepare` (admission, the files' metadata, usage and
headers), `follow_with` (how its progress and result are followed), and `images_body`
(the result's images response, built once)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pydantic import BaseModel

from pipelines.operations import OpResult
from pipelines.sizes import size_name

from ..engine.core import Progress
from ..errors import APIError
from ..requests.admission import admit
from ..requests.images import ImageMeta, encode, image_items, thetas_of
from ..requests.plans import Plan
from ..requests.schemas import ImagesResponse, Usage
from ..requests.spec import Target
from ..requests.usage import truncation, usage
from ..runtime import Runtime
from ..state.url_store import StoreTooSmall
from ..trust.credentials import COMPOSITE, TRAINED
from .follow import Following
from .progress import Delivery, Partials, progress_queue

log = logging.getLogger(__name__)

# Request fields not written into the PNGs: ids of users, transport choices, and what the
# images carry anyway (seed per image, theta per frame).
NOT_RECORDED = frozenset({"user", "safety_identifier", "response_format", "stream", "model", "seed", "thetas",
                          "output_format", "output_compression", "background", "moderation", "partial_images",
                          "frame_duration_ms", "webhook_url"})


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
    cut = truncation(rt.pipe, plan.encoded)
    headers = {"x-prompt-truncated": cut} if cut else {}
    return Prepared(cost_s, meta_for(rt, plan, out, params, cut), usage(rt.pipe, plan.encoded, plan.input_images),
                    headers)


def follow_with(rt: Runtime, params: BaseModel, out: Target, plan: Plan, ready: Prepared, prefix: str,
                base_url: str) -> tuple[Following, asyncio.Queue, Callable[[Progress], None]]:
    """How a job is followed (its events named `prefix`, the partial images params ask for,
    the images response of its result under `base_url`), the queue its progress reports go
    to, and the engine's hook that fills it."""
    partials = Partials(getattr(params, "partial_images", None) or 0, rt.pipe.output(out.size).upsamplers,
                        rt.pipe.preview)
    delivery = Delivery(ready.meta, out.size, out.fmt, out.quality, ready.usage, prefix)
    queue, hook = progress_queue(partials)
    build = functools.partial(images_body, rt, ready=ready, out=out, base_url=base_url)
    return Following(plan.work, delivery, build), queue, hook


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
    body = ImagesResponse(created=int(time.time()), data=data, size=size_name(out.size), quality=out.quality,
                          output_format=out.fmt.format, background="opaque", usage=ready.usage)
    return body.model_dump(exclude_none=True)


def meta_for(rt: Runtime, plan: Plan, out: Target, params: BaseModel, cut: Optional[str] = None) -> ImageMeta:
    """The files' metadata: the sampling settings in effect, the request's fields (not user
    ids), the size, the quality preset and, if the prompt was cut, what was kept; their
    digital source type (composite when made from uploads), the C2PA credentials, the
    watermark, and where it goes (an edit's repainted pixels; else everywhere)."""
    values = rt.pipe.settings_of(plan.opts)
    values |= {k: v for k, v in params.model_dump().items() if k not in NOT_RECORDED and v is not None}
    values.update(size=size_name(out.size), quality=out.quality, prompt_truncated=cut)
    painted = None if plan.keep is None else plan.keep[0, 0].numpy() < 0.5
    return ImageMeta(rt.model_name, plan.kind, out.seed, values, COMPOSITE if plan.inputs else TRAINED,
                     plan.ingredients if rt.credentials is not None else (), rt.credentials, rt.watermark, painted)
