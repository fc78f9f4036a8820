"""An ImageStore in Redis (server/state/url_store.py's interface): the images of `url` responses,
one key `url:<id>` each (prefix `unclip:`) that expires after `ttl_s`, so that any replica
serves the URL another one made.

One image larger than `max_bytes` is refused (StoreTooSmall) as in the memory store; the
bytes of all of them are Redis's to bound (`maxmemory` with `volatile-ttl`: the images
closest to expiry, i.e. the oldest, go first).
"""

from __future__ import annotations

from typing import Optional

from ..url_store import check_fits, new_id
from .link import RedisLink


class RedisUrlStore:
    """id -> file bytes in Redis, each for `ttl_s` seconds."""

    def __init__(self, link: RedisLink, ttl_s: float, max_bytes: int):
        self.link, self.ttl_s, self.max_bytes = link, ttl_s, max_bytes

    async def put(self, data: bytes) -> str:
        check_fits(data, self.max_bytes)
        key = new_id()
        async with self.link.guard():
            await self.link.client.set(self.link.key("url", key), data, px=max(1, int(self.ttl_s * 1000)))
        return key

    async def get(self, key: str) -> Optional[bytes]:
        async with self.link.guard():
            return await self.link.client.get(self.link.key("url", key))

    async def expires_in(self, key: str) -> float:
        async with self.link.guard():
            left_ms = await self.link.client.pttl(self.link.key("url", key))
        return max(0.0, left_ms / 1000)
