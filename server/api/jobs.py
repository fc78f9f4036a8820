"""Async jobs (extension; made by any image endpoint with `Prefer: respond-async`, see
server/api/background.py):

- `GET /v1/images/jobs`: the caller's jobs, newest first; `limit` (1-100, default 20) and
  `after` (a job id: the page after it), in OpenAI's list shape;
- `GET /v1/images/jobs/{id}`: the job object (server/state/records.py);
- `GET /v1/images/jobs/{id}/events`: its events as Server-Sent Events (server/api/job_events.py);
- `POST /v1/images/jobs/{id}/cancel`: cancel (a finished job is returned unchanged);
- `DELETE /v1/images/jobs/{id}`: cancel if still running, then drop the job and its result.

With API keys a job is its key's alone: for another key it does not exist (404
`job_not_found`, as an unknown or expired id). Finished jobs are gone (404) after
`UNCLIP_JOB_TTL_S`, or earlier when more than the store's bounds are kept. With
`UNCLIP_REDIS_URL` every replica answers for every job (503 `store_unavailable` while Redis
is unreachable; an event stream then ends, to be resumed with `Last-Event-ID`).
"""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from ..errors import APIError, bad_request
from ..requests.schemas import ImageJob, ImageJobDeleted, ImageJobList
from ..runtime import AppRuntime, Runtime
from ..state.records import JobRecord
from .auth import key_owner

router = APIRouter()


def not_found(job_id: str) -> APIError:
    return APIError(404, f"No job '{job_id}' was found (it may have expired or been deleted).", param="job_id",
                    code="job_not_found")


def caller(request: Request, rt: Runtime) -> Optional[str]:
    """The owner of the request's jobs (None without API keys)."""
    return key_owner(request.headers.get("authorization"), rt.settings.keys)


async def owned(request: Request, rt: Runtime, job_id: str) -> JobRecord:
    """The caller's job `job_id`: 404 when unknown, gone, or another key's."""
    record = await rt.jobs.store.get(job_id)
    if record is None or record.owner != caller(request, rt):
        raise not_found(job_id)
    return record


@router.get("/images/jobs", response_class=JSONResponse, responses={200: {"model": ImageJobList}},
            summary="List your async jobs, newest first (extension)")
async def list_jobs(request: Request, rt: AppRuntime, limit: int = Query(20, ge=1, le=100),
                    after: Optional[str] = Query(None, max_length=64, description="a job id: list the jobs after it")
                    ) -> JSONResponse:
    owner = caller(request, rt)
    if after is not None:
        record = await rt.jobs.store.get(after)
        if record is None or record.owner != owner:
            raise bad_request("after", f"No job '{after}' to list after (it may have expired or been deleted).")
    records, more = await rt.jobs.store.list(owner, limit, after)
    data = await rt.jobs.views(records, rt.engine)
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": more})


@router.get("/images/jobs/{job_id}", response_class=JSONResponse, responses={200: {"model": ImageJob}},
            summary="Get an async job: its status, progress, and result or error (extension)")
async def get_job(request: Request, job_id: str, rt: AppRuntime) -> JSONResponse:
    return JSONResponse(await rt.jobs.view(await owned(request, rt, job_id), rt.engine))


@router.post("/images/jobs/{job_id}/cancel", response_class=JSONResponse, responses={200: {"model": ImageJob}},
             summary="Cancel an async job (a finished one is returned unchanged) (extension)")
async def cancel_job(request: Request, job_id: str, rt: AppRuntime) -> JSONResponse:
    record = await rt.jobs.cancel(await owned(request, rt, job_id))
    return JSONResponse(await rt.jobs.view(record, rt.engine))


@router.delete("/images/jobs/{job_id}", response_class=JSONResponse, responses={200: {"model": ImageJobDeleted}},
               summary="Delete an async job and its result, cancelling it if it runs (extension)")
async def delete_job(request: Request, job_id: str, rt: AppRuntime) -> JSONResponse:
    await rt.jobs.delete(await owned(request, rt, job_id))
    return JSONResponse({"id": job_id, "object": "image.job.deleted", "deleted": True})
