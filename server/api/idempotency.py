"""The `Idempotency-Key` header (as Stripe's and other APIs'): with the global queue
(Redis), a request that carries one starts at most one job per key, owner and job
lifetime. A retry of it, on any replica, after a timeout, a dropped connection or a
replica that died, attaches to that job: an async request gets its job object again, a
synchronous one waits for its images (the job may since run on another replica). A
retry whose body differs is refused (400 `idempotency_key_reused`). A synchronous
request with a key is not cancelled when its client goes away (it is expected back), and
its result stays readable by a retry for `job_ttl_s`.

Without Redis the header is accepted and has no effect: one process has no other replica
to retry on, and its jobs end with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Optional

from fastapi import Request

from ..errors import bad_request
from ..requests.spec import Spec, spec_json
from ..runtime import Runtime

HEADER = "Idempotency-Key"
MAX_LENGTH = 255


def idempotency_key(request: Request) -> Optional[str]:
    """The request's key, if any (400 naming the header when empty, too long or not printable ASCII)."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= MAX_LENGTH or not key.isascii() or not key.isprintable():
        raise bad_request(HEADER, f"'{HEADER}' must be 1 to {MAX_LENGTH} printable ASCII characters.")
    return key


def digest(spec: Spec, background: bool) -> str:
    """What a retry must repeat: the operation, its fields, the output, the uploads (their
    pixels: their C2PA ingredient archives differ from one reading to the next) and whether
    it is async."""
    return hashlib.sha256(f"{int(background)}{spec_json(replace(spec, ingredients=()))}".encode()).hexdigest()[:32]


async def bind(rt: Runtime, owner: Optional[str], key: str, job_id: str, spec: Spec, background: bool) -> Optional[str]:
    """Bind `key` to the new job `job_id` (None), or the id of the job a first request with
    it started (400 when that request differed)."""
    mine = digest(spec, background)
    bound = await rt.shared.idempotency.bind(owner, key, job_id, mine)
    if bound is None:
        return None
    if bound[1] != mine:
        raise bad_request(HEADER, f"This '{HEADER}' was used with another request; use a new key for a new "
                                  "request.", "idempotency_key_reused")
    return bound[0]
