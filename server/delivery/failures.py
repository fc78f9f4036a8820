"""How a run's failure is answered: the engine's, the pipeline's and the shared store's
exceptions as API errors (`from_exception`), and the API error of a job's record that
ended without a result (`record_error`, from the code the record keeps)."""

from __future__ import annotations

import math

from pipelines.errors import InvalidInput

from ..engine.core import EngineCrashed, EngineStopped, JobCancelled, JobExpired, QueueFull, ServerShutdown
from ..errors import APIError, StoreUnavailable, bad_request, unavailable
from ..state.records import JobRecord

# The status of each error code a job may end with, where it is neither 400 (an invalid
# request, by its type) nor 503 (not ready, draining, cancelled, the store down, ...).
STATUS = {"deadline_exceeded": 504, "internal_error": 500, "url_store_too_small": 500}


def from_exception(exc: Exception) -> APIError:
    """Map the engine's and the pipeline's exceptions to API errors (500 for the rest)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidInput):
        return bad_request(exc.param, exc.message, exc.code)
    if isinstance(exc, QueueFull):
        retry = max(1, math.ceil(exc.retry_after_s))
        return APIError(429, "The server is at capacity: too many queued requests. Retry later.",
                        "rate_limit_error", code="queue_full", headers={"Retry-After": str(retry)})
    if isinstance(exc, ServerShutdown):
        return unavailable("The server shut down before the images were ready; retry on another replica.",
                           "shutdown")
    if isinstance(exc, EngineCrashed):
        return unavailable("The server's engine stopped working.", "engine_unavailable")
    if isinstance(exc, EngineStopped):
        return unavailable("The server is shutting down and accepts no new work.", "draining")
    if isinstance(exc, JobCancelled):
        return unavailable("The job was cancelled.", "cancelled")
    if isinstance(exc, StoreUnavailable):
        return unavailable("The server's shared store is unreachable; retry shortly.", "store_unavailable")
    if isinstance(exc, JobExpired):
        return APIError(STATUS["deadline_exceeded"], "The request's deadline passed before the images were ready.",
                        "server_error", code="deadline_exceeded")
    return APIError(STATUS["internal_error"], "The server had an error while processing your request.",
                    "server_error", code="internal_error")


def record_error(record: JobRecord) -> APIError:
    """The API error of a record that ended without a result (as in process, by its code)."""
    err = record.error or {"message": "The job was cancelled.", "type": "server_error", "code": "cancelled"}
    code = err.get("code")
    status = 400 if err.get("type") == "invalid_request_error" else STATUS.get(code, 503)
    return APIError(status, err.get("message", "The job failed."), err.get("type", "server_error"),
                    param=err.get("param"), code=code, headers={"Retry-After": "5"} if status == 503 else None)
