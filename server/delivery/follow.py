"""Following a job into its record (an async job here, or a job of the global queue on
the replica that claimed it): each progress report becomes an `image.job.progress` event
(and an `image.job.partial_image` event per image where the request asked for
`partial_images`); when the engine job ends, its images response is built once, exactly
as the synchronous answer's (server/delivery/results.py `images_body`), and the record is
finished (server/jobs/async_jobs.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from pipelines.operations import OpResult

from ..engine.core import Job, JobCancelled, JobExpired, Progress
from ..errors import StoreUnavailable, error_body
from ..jobs.async_jobs import while_store_down
from ..runtime import Runtime
from ..state.records import EVENT_PREFIX, Status
from .failures import from_exception
from .progress import Delivery, image_fields, partial_files

log = logging.getLogger(__name__)

_DONE = object()


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


async def follow(rt: Runtime, job: Job, queue: asyncio.Queue, fraction: Fraction, following: Following) -> bool:
    """Relay the engine job's progress into its record until it ends, then finish the
    record; whether this follower's end is the record's (AsyncJobs.settle)."""
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
    if status == "cancelled" and job.lease_lost(job.ended or time.monotonic()):
        rt.jobs.abandon(job.id)  # its claim ran out: the reaper hands the job on, this writes nothing
    return await rt.jobs.settle(job.id, status, result, error, started=job.started)


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
    if not await wanted(rt, job.id):
        return "cancelled", None, None  # finish() keeps the record as it is
    try:
        return "completed", await while_store_down(lambda: following.build_body(job.future.result())), None
    except Exception as exc:  # noqa: BLE001 - e.g. the URL store too small: the job fails, answered as such
        return "failed", None, error_body(from_exception(exc))["error"]


async def wanted(rt: Runtime, job_id: str) -> bool:
    """Whether the job's record still waits for its result (yes, while the store is down:
    the final write decides, and a final record is never replaced)."""
    try:
        record = await rt.jobs.store.get(job_id)
    except StoreUnavailable:
        return True
    return record is not None and not record.finished

