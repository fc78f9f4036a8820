"""Answering a spec: `serve` refuses at once (400) an operation whose estimated run time
exceeds the deadline, runs it on the engine and answers with OpenAI's images response
(with `size`, `quality`, `output_format`, `background` and `usage`), or, for `stream=true`,
with Server-Sent Events (server/api/stream.py), or, with `Prefer: respond-async`, with 202
and a job to poll (server/api/background.py). With Redis, a synchronous or async request
goes to the global queue instead (`enqueue`; server/claimer.py runs it on some replica) and
a synchronous one waits for its record's end (`await_record`); `stream=true` runs here. An
`Idempotency-Key` binds the queued job to the key (server/api/idempotency.py). A request
refused while queueing (429, or 503 when Redis stops answering between the record and the
queue) leaves neither record nor key behind (`withdraw`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import JSONResponse

from ..delivery.failures import record_error
from ..delivery.results import Prepared, follow_with, images_body, prepare
from ..engine.core import QueueFull
from ..engine.job import new_job_id
from ..errors import APIError, StoreUnavailable
from ..jobs.async_jobs import while_store_down
from ..requests.plans import plan_of
from ..requests.spec import Spec, spec_json
from ..runtime import Runtime
from ..state.records import EVENT_PREFIX as JOB_EVENT_PREFIX
from ..state.records import FINAL, JobRecord
from .auth import key_owner
from .background import accepted, check_delivery, prefers_async, start
from .idempotency import bind, idempotency_key
from .running import await_job, submit
from .stream import stream_response

log = logging.getLogger(__name__)

# The SSE event prefix of the operations that stream (server/api/stream.py).
STREAM_PREFIX = {"generation": "image_generation", "edit": "image_edit"}


TERMINAL = frozenset(f"{JOB_EVENT_PREFIX}.{status}" for status in FINAL)


WAIT_S = 5.0  # one wait for a queued synchronous job's next event


async def serve(request: Request, rt: Runtime, spec: Spec) -> Any:
    """Run the spec's operation and answer: the images response; SSE when params ask to
    stream; 202 and a job with `Prefer: respond-async` (server/api/background.py). With
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


async def enqueue(request: Request, rt: Runtime, spec: Spec, ready: Prepared, base_url: str, background: bool,
                  webhook_url: Optional[str]) -> Any:
    """Put the job in the global queue (429 with a Retry-After from the global depth when
    `queue_size` jobs wait already); answer 202 with the job, or wait for its end. A
    synchronous request's record is not listed, and goes once answered unless an
    `Idempotency-Key` may ask for it again (server/api/idempotency.py)."""
    owner = key_owner(request.headers.get("authorization"), rt.settings.keys)
    key = idempotency_key(request)
    record = JobRecord(new_job_id(), spec.kind, int(time.time()), owner=owner, webhook_url=webhook_url,
                       listed=background)
    if key is not None and (started := await bind(rt, owner, key, record.id, spec, background)) is not None:
        if (earlier := await rt.jobs.store.get(started)) is not None:
            return await answer(request, rt, earlier, background, ready.headers, keyed=True)
        await rt.shared.idempotency.release(owner, key, started)  # its job is gone: this request starts anew
        return await enqueue(request, rt, spec, ready, base_url, background, webhook_url)
    text = spec_json(spec, base_url=base_url, cost_s=ready.cost_s)
    try:
        await rt.jobs.store.put(record)
        queued, depth = await rt.shared.queue.push(record.id, text, ready.cost_s)
    except StoreUnavailable:  # the record may stand, its job unqueued: it goes once the store answers
        rt.jobs.when_store_answers(lambda: withdraw(rt, record.id, owner, key), f"withdraw-{record.id}")
        raise
    if not queued:
        await withdraw(rt, record.id, owner, key)
        raise QueueFull(rt.engine.retry_after(max(1, depth - rt.settings.queue_size + 1)), depth)
    rt.claimable.set()  # this replica takes it at once if it has a free slot
    return await answer(request, rt, record, background, ready.headers, keyed=key is not None)


async def withdraw(rt: Runtime, job_id: str, owner: Optional[str], key: Optional[str]) -> None:
    """Undo an admission that did not queue its job (the request was refused): its record
    goes, and its idempotency key no longer names it, so that no job is listed queued for
    ever and a retry with the key starts anew."""
    await rt.jobs.store.delete(job_id)
    if key is not None:
        await rt.shared.idempotency.release(owner, key, job_id)


async def answer(request: Request, rt: Runtime, record: JobRecord, background: bool, headers: dict[str, str],
                 keyed: bool) -> Any:
    """202 with the queued job, or its images once it ends. A synchronous request without
    an idempotency key (`keyed`) cancels its job when its client goes away, and drops the
    record once answered."""
    if background:
        return await accepted(rt, record, headers)
    rt.waiting += 1
    try:
        return JSONResponse(await await_record(request, rt, record.id, cancel_on_disconnect=not keyed),
                            headers=headers)
    finally:
        rt.waiting -= 1
        if not keyed:
            try:
                await rt.jobs.store.delete(record.id)
            except StoreUnavailable:  # its result would stay as long as a finished job's
                rt.jobs.when_store_answers(lambda: rt.jobs.store.delete(record.id), f"drop-{record.id}")


async def await_record(request: Request, rt: Runtime, job_id: str, cancel_on_disconnect: bool = True) -> dict[str, Any]:
    """The images response of a queued synchronous job, wherever it runs: its events are
    followed until the terminal one (a client disconnect cancels it, if asked); its
    failure is raised. A Redis restart or failover is waited out (`while_store_down`), as
    the job's own end waits it out."""
    watcher = asyncio.create_task(cancel_record_on_disconnect(request, rt, job_id)) if cancel_on_disconnect else None
    limit = time.monotonic() + rt.settings.default_deadline_s + 3 * rt.settings.lease_s + 30
    after = 0
    try:
        while time.monotonic() < limit:
            events = await while_store_down(lambda n=after: rt.jobs.store.events_after(job_id, n, wait_s=WAIT_S))
            after = events[-1].id if events else after
            if events and not any(e.type in TERMINAL for e in events):
                continue
            record = await while_store_down(lambda: rt.jobs.store.get(job_id))
            if record is None:
                raise APIError(503, "The job's record was lost (the shared store restarted without persistence); "
                                    "retry the request.", "server_error", code="job_lost",
                               headers={"Retry-After": "1"})
            if record.finished:
                if record.status == "completed" and record.result is not None:
                    return record.result
                raise record_error(record)
        raise APIError(504, "The request's deadline passed before the images were ready.", "server_error",
                       code="deadline_exceeded")
    finally:
        if watcher is not None:
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
