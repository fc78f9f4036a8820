"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: the error
types every layer raises, at the bottom of the server (this module imports nothing of it,
nor anything heavy). The engine's and the pipeline's exceptions become these in
server/delivery/failures.py; the HTTP handlers that answer them are server/api/errors.py.

Status codes: 400 invalid input (naming `param`), 401 missing/invalid key, 404 unknown
route or expired image, 405, 413 body too large, 429 queue full (with Retry-After),
500 job failure (no internals), 503 not ready / draining / job cancelled by the server /
the shared store (Redis) unreachable, 504 the job's deadline passed before it finished.
499 (`CLIENT_CLOSED`, nginx's "client closed request") is never sent: it is the status
the metrics give a request whose client went away before its response started.
"""

from __future__ import annotations

from typing import Any, Optional

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



def unavailable(message: str, code: str) -> APIError:
    """503: not ready (loading, warming up, the shared store down) or draining."""
    return APIError(503, message, "server_error", code=code, headers={"Retry-After": "5"})



def error_body(err: APIError) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}



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

