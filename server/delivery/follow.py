"""`Prefer: respond-async` (RFC 7240) on an image endpoint: the job is submitted as a
synchronous call's would be (same checks, same queue, same 429), answered at once with 202,
its job object, `Location: /v1/images/jobs/{id}` and `Preference-Applied: respond-async`,
and followed in the background: each progress report becomes an `image.job.progress`
event of its record (and an `image.job.partial_image` event per image where the request
asked for `partial_images`); when the engine job ends, its images response is built once,
exactly as the synchronous answer's (server/requests/spec.py `images_body`), and the record
is finished (server/jobs/async_jobs.py). A client that goes away does not cancel the job.

`webhook_url` asks for a webhook when the job ends; it needs `Prefer: respond-async`, and
`stream=true` does not combine with it (the job's events stream instead).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from fastapi import Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from pipelines.operations import OpResult

from ..api.auth import key_owner
from ..engine.core import Job, JobCancelled, JobExpired, Progress
from ..errors import bad_request, error_body
from ..jobs.async_jobs import wall_time
from ..requests.schemas import ImageJob
from ..runtime import Runtime
from ..state.records import EVENT_PREFIX, JobRecord, Status
from .failures import from_exception
from .progress import Delivery, image_fields, partial_files

log = logging.getLogger(__name__)

_DONE = object()
PREFERENCE = "respond-async"
ASYNC_RESPONSE = {202: {"model": ImageJob, "description": "With `Prefer: respond-async`: the job, queued; "
                                                          "`Location` names it, poll it or follow its events"}}


@dataclass
class Following:
    """How a job's progress becomes events and its result a body: the plan's work (for the
    progress fraction), how partial images are written, the images response of a result."""

    work: dict[str, int]
    delivery: Delivery
    build_body: Callable[[OpResult], Awaitable[dict[str, Any]]]


class Fraction:
    """A job's progress from 0 to 1: the track-steps done over the plan's work (capped
    below 1 until the job completes)."""

    def __init__(self, work: dict[str, int]):
        self.total = max(1, sum(work.values()))
        self.before = 0  # track-steps of the stage requests already done
        self.request: Optional[tuple[list, int]] = None  # current request: its tracks, total steps

    def update(self, p: Progress) -> float:
        """The fraction after a progress report."""
        if self.request is not None and self.request[0] is not p.tracks:  # a new stage request
            self.before += self.request[1] * len(self.request[0])
        self.request = (p.tracks, p.total)
        done = self.before + p.step * len(p.tracks)
        return round(min(done / self.total, 0.99), 4)


def prefer_header(prefer: Optional[str] = Header(None, description="`respond-async` (RFC 7240): answer 202 with a "
                                                                   "job at once instead of waiting")) -> None:
    """Documents the Prefer header of the image endpoints in OpenAPI (`serve` reads it)."""


def prefers_async(request: Request) -> bool:
    """Whether a `Prefer` header (RFC 7240: comma-separated preferences, each `token[=value]`
    with `;` parameters) asks for `respond-async`."""
    for value in request.headers.getlist("prefer"):
        for preference in value.split(","):
            if preference.split(";")[0].split("=")[0].strip().lower() == PREFERENCE:
                return True
    return False


def check_delivery(rt: Runtime, params: BaseModel, background: bool) -> Optional[str]:
    """400 for what an async job does not combine with (`stream`) and for a webhook without
    one; the checked webhook URL, if any (400 for a host that is not allowed)."""
    url = getattr(params, "webhook_url", None)
    if background and getattr(params, "stream", None):
        raise bad_request("stream", "'stream' does not combine with Prefer: respond-async; follow the job's "
                                    "events at /v1/images/jobs/{id}/events instead.", "unsupported_value")
    if url is not None and not background:
        raise bad_request("webhook_url", "'webhook_url' is for async jobs: send the header Prefer: respond-async.",
                          "unsupported_value")
    return rt.jobs.check_webhook(url) if url is not None else None


async def start(request: Request, rt: Runtime, job: Job, queue: asyncio.Queue, following: Following,
                webhook_url: Optional[str], headers: dict[str, str]) -> JSONResponse:
    """Keep the record of a submitted job (its progress reports go to `queue`), follow it
    in the background, and answer 202 with the job."""
    owner = key_owner(request.headers.get("authorization"), rt.settings.keys)
    record = JobRecord(job.id, job.kind, wall_time(job.submitted), owner=owner, webhook_url=webhook_url)
    await rt.jobs.add(record, job, follow(rt, job, queue, Fraction(following.work), following))
    return await accepted(rt, record, headers)


async def accepted(rt: Runtime, record: JobRecord, headers: dict[str, str]) -> JSONResponse:
    """202 with the job object of a kept record, where to poll it, and the preference applied."""
    headers = {"Location": f"/v1/images/jobs/{record.id}", "Preference-Applied": PREFERENCE, **headers}
    return JSONResponse(await rt.jobs.view(record, rt.engine), status_code=202, headers=headers)


async def follow(rt: Runtime, job: Job, queue: asyncio.Queue, fraction: Fraction, following: Following) -> None:
    """Relay the engine job's progress into its record until it ends, then finish the record."""
    done = asyncio.wrap_future(job.future)
    done.add_done_callback(lambda f: (f.cancelled() or f.exception(), queue.put_nowait(_DONE)))  # retrieved
    try:
        await relay(rt, job, queue, fraction, following)
        status, result, error = await outcome(rt, job, following)
    except Exception as exc:  # noqa: BLE001 - a follower's own failure fails its job, never the server
        log.exception("following job %s failed", job.id)
        status, result, error = "failed", None, error_body(from_exception(exc))["error"]
        if not job.future.done():
            job.cancel()
    await rt.jobs.settle(job.id, status, result, error, started=job.started)


async def relay(rt: Runtime, job: Job, queue: asyncio.Queue, fraction: Fraction, following: Following) -> None:
    """Progress reports (and partial images) become events, until the job ends."""
    sent, d = 0, following.delivery
    while (item := await queue.get()) is not _DONE:
        progress, pixels = item
        share = fraction.update(progress)
        if pixels is None and not queue.empty():
            continue  # a newer report waits already: only that one is written
        event = {"type": f"{EVENT_PREFIX}.progress", "stage": progress.stage, "step": progress.step,
                 "total": progress.total, "progress": share, "created_at": int(time.time())}
        await rt.jobs.progress(job.id, job, share, event)
        if pixels is None:
            continue
        for i, data in enumerate(await asyncio.to_thread(partial_files, pixels, d)):
            await rt.jobs.event(job.id, "partial_image",
                                image_fields(f"{EVENT_PREFIX}.partial_image", d, i, data, partial_image_index=sent))
        sent += 1


async def outcome(rt: Runtime, job: Job, following: Following) -> tuple[Status, Optional[dict], Optional[dict]]:
    """How the ended engine job ends its record: (status, images response, error object).
    The body is built only if the record still waits for it (not cancelled nor deleted)."""
    if job.future.cancelled():
        return "cancelled", None, None
    exc = job.future.exception()
    if exc is not None:
        err = from_exception(exc)
        status: Status = "cancelled" if isinstance(exc, JobCancelled) else (
            "expired" if isinstance(exc, JobExpired) else "failed")
        if err.status >= 500 and status != "cancelled":
            log.error("async job %s failed: %s", job.id, err.code, exc_info=exc if err.status == 500 else None)
        return status, None, error_body(err)["error"]
    record = await rt.jobs.store.get(job.id)
    if record is None or record.finished:
        return "cancelled", None, None  # finish() keeps the record as it is
    try:
        return "completed", await following.build_body(job.future.result()), None
    except Exception as exc:  # noqa: BLE001 - e.g. the URL store too small: the job fails, answered as such
        return "failed", None, error_body(from_exception(exc))["error"]
