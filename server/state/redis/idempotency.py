"""Idempotency keys in Redis (the `Idempotency-Key` header, server/api/idempotency.py): the
first request with a key binds it to the job it queues; a retry with the same key, on any
replica, finds that job instead of queueing another.

Keys (prefix `unclip:`, server/state/redis/link.py): `idem:<owner>:<sha256 of the key>` ->
`"<job id> <digest of the request>"`, set once (`SET NX`) and kept `ttl_s`, the longest a
job and its record live. Keys are per owner (API key digest): one client's key never
finds another's job.
"""

from __future__ import annotations

import hashlib
from typing import Optional

from .link import RedisLink


class RedisIdempotency:
    """Idempotency key -> the job it started, for `ttl_s` seconds."""

    def __init__(self, link: RedisLink, ttl_s: float):
        self.link, self.ttl_s = link, ttl_s

    def _key(self, owner: Optional[str], key: str) -> str:
        return self.link.key("idem", owner or "", hashlib.sha256(key.encode()).hexdigest())

    async def bind(self, owner: Optional[str], key: str, job_id: str, digest: str) -> Optional[tuple[str, str]]:
        """Bind `key` to `job_id` (None), unless it is bound already: then the (job id,
        request digest) it is bound to."""
        name = self._key(owner, key)
        async with self.link.guard():
            for _ in range(2):  # the bound key may expire between SET and GET: then bind again
                if await self.link.client.set(name, f"{job_id} {digest}", nx=True, px=int(self.ttl_s * 1000)):
                    return None
                if (raw := await self.link.client.get(name)) is not None:
                    bound_id, _, bound_digest = raw.decode().partition(" ")
                    return bound_id, bound_digest
        raise RuntimeError("idempotency key neither bound nor found")

    async def release(self, owner: Optional[str], key: str, job_id: str) -> None:
        """Unbind `key` if it is still bound to `job_id` (its job was never queued, or is gone)."""
        name = self._key(owner, key)
        async with self.link.guard():
            raw = await self.link.client.get(name)
            if raw is not None and raw.decode().partition(" ")[0] == job_id:
                await self.link.client.delete(name)
