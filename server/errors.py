"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and the
exception handlers that produce them.

Status codes: 400 invalid input (naming `param`), 401 missing/invalid key, 404 unknown
route or expired image, 405, 413 body too large, 429 queue full (with Retry-After),
500 job failure (no internals), 503 not ready / draining / job cancelled by the server /
the shared store (Redis) unreachable, 504 the job's deadline passed before it finished.
499 (`CLIENT_CLOSED`, nginx's "client closed request") is never sent: it is the status
the metrics give a request whose client went away before its response started.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.errors import InvalidInput

from .engine.core import EngineCrashed, EngineStopped, JobCancelled, JobExpired, QueueFull, ServerShutdown

CLIENT_CLOSED = 499


class StoreUnavailable(Exception):
    """The shared store (Redis, UNCLIP_REDIS_URL) did not answer: 503 `store_unavailable`."""


class APIError(Exception):
    """An error response: HTTP status plus OpenAI's error fields."""

    def __init__(
        self, status: int, message: str, type: str = "invalid_request_error", param: Optional[str] = None,
        code: Optional[str] = None, headers: Optional[dict[str, str]] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}


def bad_request(param: Optional[str], message: str, code: str = "invalid_value") -> APIError:
    """A 400 invalid_request_error naming the offending field."""
    return APIError(400, message, param=param, code=code)


def error_body(err: APIError) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def error_response(err: APIError) -> JSONResponse:
    """The response for an APIError."""
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)


def from_validation(errors: list[dict], skip: int = 0) -> APIError:
    """A pydantic error list -> 400 naming the first offending field (its loc after `skip`)."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())[skip:] if not isinstance(p, int)]
    param = loc[0] if loc else None
    kind = first.get("type", "")
    if kind == "missing":
        return bad_request(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")
    if kind == "extra_forbidden":
        return bad_request(param, f"Unrecognized request argument supplied: '{param}'.", "unknown_parameter")
    where = f"'{param}'" if param else "request body"
    return bad_request(param, f"Invalid value for {where}: {first.get('msg', 'invalid')}.")


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
        return APIError(504, "The request's deadline passed before the images were ready.", "server_error",
                        code="deadline_exceeded")
    return APIError(500, "The server had an error while processing your request.", "server_error",
                    code="internal_error")


def unavailable(message: str, code: str) -> APIError:
    """503: not ready (loading, warming up, the shared store down) or draining."""
    return APIError(503, message, "server_error", code=code, headers={"Retry-After": "5"})


def _http_error(status: int, detail: Any) -> APIError:
    """Starlette's HTTPException (unknown route, wrong method, body parse errors)."""
    message = detail if isinstance(detail, str) else "Request error"
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    kind = "invalid_request_error" if status < 500 else "server_error"
    return APIError(status, message, kind, code=codes.get(status))


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into an OpenAI-shaped error."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(from_validation(list(exc.errors()), skip=1))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = _http_error(exc.status_code, exc.detail)
        err.headers.update(exc.headers or {})
        return error_response(err)

    async def _mapped(request: Request, exc: Exception) -> JSONResponse:
        return error_response(from_exception(exc))

    for cls in (InvalidInput, QueueFull, EngineStopped, JobCancelled, JobExpired, StoreUnavailable):
        app.add_exception_handler(cls, _mapped)
