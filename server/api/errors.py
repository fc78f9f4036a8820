"""The exception handlers that answer every error in OpenAI's shape (server/errors.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.errors import InvalidInput

from ..delivery.failures import from_exception
from ..engine.core import EngineStopped, JobCancelled, JobExpired, QueueFull
from ..errors import APIError, StoreUnavailable, error_body, from_validation


def error_response(err: APIError) -> JSONResponse:
    """The response for an APIError."""
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)



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
