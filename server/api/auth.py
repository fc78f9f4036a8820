"""Optional bearer API keys, checked before the body is read.

With keys configured, every `/v1/...` route needs `Authorization: Bearer <key>`, except
the image URLs under `/v1/files/images/` (their unguessable ids are the capability, as
with OpenAI's signed URLs) unless `files_require_key` is set. `/health`, `/ready`,
`/metrics` and the docs stay open. A request with more than one Authorization header is
refused (which one counts would depend on the proxy in front). Keys are compared in
constant time, every configured key every time. What a key makes (async jobs) is its
own: `key_owner` names the owner by a digest of the key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable, Optional

from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import APIError
from .errors import error_response

# Documents the scheme in OpenAPI; enforcement is the middleware's.
bearer_scheme = HTTPBearer(auto_error=False, description="API key, when the server is configured with keys")

OPEN_PREFIXES = ("/v1/files/images/",)


def key_matches(given: str, keys: Iterable[str]) -> bool:
    """True if `given` equals one of `keys`, comparing against all of them in constant time."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """The token of an `Authorization: Bearer <token>` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_owner(authorization: Optional[str], keys: Iterable[str]) -> Optional[str]:
    """Who owns what a request makes (async jobs): a digest of its API key, so that no key
    is stored; None when no keys are configured (everything is everyone's)."""
    token = bearer_token(authorization)
    if not tuple(keys) or token is None:
        return None
    return hashlib.sha256(token.encode()).hexdigest()


def needs_key(path: str, files_require_key: bool = False) -> bool:
    """Whether a request path is protected."""
    return path.startswith("/v1/") and (files_require_key or not path.startswith(OPEN_PREFIXES))


class AuthMiddleware:
    """Answers 401 (OpenAI's invalid_api_key) to protected requests without a valid key."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], files_require_key: bool = False):
        self.app, self.keys, self.files_require_key = app, keys, files_require_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not needs_key(scope["path"], self.files_require_key):
            return await self.app(scope, receive, send)
        given = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"authorization"]
        if len(given) > 1:
            err = APIError(401, "Send exactly one Authorization header.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
            return await error_response(err)(scope, receive, send)
        token = bearer_token(given[0] if given else None)
        if token is not None and key_matches(token, self.keys):
            return await self.app(scope, receive, send)
        missing = "You didn't provide an API key (Authorization: Bearer <key>)."
        message = "Incorrect API key provided." if token else missing
        err = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error_response(err)(scope, receive, send)
