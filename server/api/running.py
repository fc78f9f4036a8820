"""Running a request's operation: submit it to the engine, await its result (cancelled
when the client goes away: then ClientDisconnect, no answer), and map its failure to an
API error."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

from fastapi import Request
from starlette.requests import ClientDisconnect

from pipelines.operations import OpResult
from pipelines.unclip import Operation

from ..delivery.failures import from_exception
from ..engine.core import Job, JobCancelled, Progress
from ..errors import APIError
from ..runtime import Runtime

log = logging.getLogger(__name__)


def submit(rt: Runtime, op: Operation, kind: str, on_progress: Optional[Callable[[Progress], None]] = None,
           cost_s: Optional[float] = None) -> Job:
    """Hand an operation to the engine (QueueFull -> 429, EngineStopped -> 503)."""
    return rt.engine.submit(op, kind=kind, on_progress=on_progress, cost_s=cost_s)


async def cancel_on_disconnect(request: Request, job: Job) -> None:
    """Wait for the client to go away, then cancel its job (the task returns only then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            if not job.future.done():
                log.info("client went away: cancelling job %s", job.id)
                job.cancel()
            return


async def await_job(request: Request, job: Job) -> OpResult:
    """The job's result; a client disconnect cancels it; failures become API errors."""
    watcher = asyncio.create_task(cancel_on_disconnect(request, job))
    try:
        return await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        if job.future.cancelled() and not asyncio.current_task().cancelling():
            raise job_failure(request, job, JobCancelled(), watcher) from None
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI-shaped error
        raise job_failure(request, job, exc, watcher) from None
    finally:
        watcher.cancel()
        if not job.future.done():
            job.cancel()


def went_away(watcher: asyncio.Task) -> bool:
    """Whether a disconnect watcher (a cancel_on_disconnect task) saw its client go."""
    return watcher.done() and not watcher.cancelled() and watcher.exception() is None


def job_failure(request: Request, job: Job, exc: Exception, watcher: asyncio.Task) -> Exception:
    """What a request whose job ended without a result raises: ClientDisconnect when its
    client went away (no one to answer, nothing to log), else the job's API error."""
    return ClientDisconnect() if went_away(watcher) else job_error(request, job, exc)


def job_error(request: Request, job: Job, exc: Exception) -> APIError:
    """Map a job's exception to an API error, logging failures with their request id."""
    err = from_exception(exc)
    if err.status >= 500:
        rid = request.scope.get("state", {}).get("request_id", "-")
        log.error("job %s (%s) failed: %s", job.id, rid, err.code, exc_info=exc if err.status == 500 else None)
    return err
