"""`Prefer: respond-async` (RFC 7240) on an image endpoint: the job is submitted as a
synchronous call's would be (same checks, same queue, same 429), answered at once with 202,
its job object, `Location: /v1/images/jobs/{id}` and `Preference-Applied: respond-async`,
and followed into its record in the background (server/delivery/follow.py). A client
that goes away does not cancel the job.

`webhook_url` asks for a webhook when the job ends; it needs `Prefer: respond-async`, and
`stream=true` does not combine with it (the job's events stream instead).
"""

from __future__ import annotations

import asyncio
from typing import Optional

from fastapi import Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..delivery.follow import Following, Fraction, follow
from ..engine.core import Job
from ..errors import bad_request
from ..jobs.async_jobs import wall_time
from ..requests.schemas import ImageJob
from ..runtime import Runtime
from ..state.records import JobRecord
from .auth import key_owner

PREFERENCE = "respond-async"


ASYNC_RESPONSE = {202: {"model": ImageJob, "description": "With `Prefer: respond-async`: the job, queued; "
                                                          "`Location` names it, poll it or follow its events"}}


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
