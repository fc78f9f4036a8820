"""`GET /v1/images/jobs/{id}/events` (extension): an async job's events as Server-Sent
Events, each with an `id:`; a reconnect with `Last-Event-ID: n` gets the events after n;
live until the terminal event (`image.job.completed`, `.failed`, `.cancelled`, `.expired`,
whose data carries the job object), with a comment line every 15 s while nothing happens.
The job is the caller's only (server/api/jobs.py's `owned`); with Redis, a stream ends
when Redis becomes unreachable, to be resumed with `Last-Event-ID`.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Optional

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from ..errors import StoreUnavailable, bad_request
from ..runtime import AppRuntime, Runtime
from ..state.records import EVENT_PREFIX, FINAL, JobEvent
from .jobs import owned
from .stream import sse

log = logging.getLogger(__name__)
router = APIRouter()

KEEPALIVE_S = 15.0
MAX_EVENT_ID_DIGITS = 12
TERMINAL = frozenset(f"{EVENT_PREFIX}.{status}" for status in FINAL)
EVENTS_RESPONSE = {200: {"description": "Server-Sent Events: `image.job.progress`, `image.job.partial_image`, "
                                        "then one of `image.job.completed`, `.failed`, `.cancelled`, `.expired`",
                         "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def last_event_id(value: Optional[str]) -> int:
    """The event number a reconnecting client has seen (0 without the header); 400 if it is
    not a non-negative integer."""
    if value is None or not value.strip():
        return 0
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_EVENT_ID_DIGITS:
        raise bad_request("Last-Event-ID", f"'Last-Event-ID' must be the id of an event (a number), got {value!r}.")
    return int(value)


@router.get("/images/jobs/{job_id}/events", response_class=StreamingResponse, responses=EVENTS_RESPONSE,
            summary="Follow an async job's events (Server-Sent Events, resumable with Last-Event-ID) (extension)")
async def job_events(request: Request, job_id: str, rt: AppRuntime,
                     last_event: Optional[str] = Header(None, alias="Last-Event-ID",
                                                        description="resume after this event id")
                     ) -> StreamingResponse:
    after = last_event_id(last_event)
    await owned(request, rt, job_id)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(replay(rt, job_id, after), media_type="text/event-stream", headers=headers)


async def replay(rt: Runtime, job_id: str, after: int) -> AsyncIterator[str]:
    """`follow_events`, ended early (the client may resume) when the store becomes unreachable."""
    try:
        async for chunk in follow_events(rt, job_id, after):
            yield chunk
    except StoreUnavailable:
        log.warning("store unreachable: the event stream of job %s ends", job_id)


async def follow_events(rt: Runtime, job_id: str, after: int) -> AsyncIterator[str]:
    """The job's events after `after`, then live ones until its terminal event; a comment
    line every KEEPALIVE_S seconds while none comes. Ends when the job is gone."""
    store = rt.jobs.store
    while True:
        events = await store.events_after(job_id, after)
        if not events:
            record = await store.get(job_id)
            if record is None or record.finished:
                return
            events = await store.events_after(job_id, after, wait_s=KEEPALIVE_S)
            if not events:
                yield ": keep-alive\n\n"
                continue
        for event in events:
            yield await render(rt, job_id, event)
            after = event.id
            if event.type in TERMINAL:
                return


async def render(rt: Runtime, job_id: str, event: JobEvent) -> str:
    """One event as SSE; a terminal event carries the job object as it is now."""
    data = event.data
    if event.type in TERMINAL:
        record = await rt.jobs.store.get(job_id)
        data = {"type": event.type, "job": await rt.jobs.view(record, rt.engine) if record is not None else None}
    return sse(event.type, data, event_id=event.id)
