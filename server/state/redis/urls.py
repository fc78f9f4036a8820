"""An ImageStore in Redis (server/state/url_store.py's interface): the images of `url`
responses, so that any replica serves the URL another one made, bounded as the memory store
is: at most `max_bytes` in all, the oldest going first, each for `ttl_s`.

Keys (prefix `unclip:`): `url:<id>` the file's bytes, expiring after `ttl_s`; `urls` the
ids in the order they were put (scored by `url_seq`); `url_sizes` id -> bytes; `url_bytes`
their sum. Each put is one Lua script: it counts out the oldest whose key expired (one TTL
for all: they are the oldest) and, while the new image would not fit, drops the oldest,
then stores it. Redis itself never has to evict (server/state/redis/policy.py):
its `maxmemory` needs room for `max_bytes` of images besides the job records.

One image larger than `max_bytes` is refused (StoreTooSmall) as in the memory store.
"""

from __future__ import annotations

from typing import Optional

from redis.commands.core import AsyncScript

from ..url_store import check_fits, new_id
from .link import PREFIX, RedisLink

# ARGV: prefix, id, data, ttl_ms, max_bytes. 1 (also when a retry finds it stored).
PUT = """
local P, id, size = ARGV[1], ARGV[2], string.len(ARGV[3])
local index, sizes, total = P .. 'urls', P .. 'url_sizes', P .. 'url_bytes'
if redis.call('EXISTS', P .. 'url:' .. id) == 1 then return 1 end
local function forget(old)
  redis.call('DECRBY', total, tonumber(redis.call('HGET', sizes, old) or '0'))
  redis.call('DEL', P .. 'url:' .. old)
  redis.call('HDEL', sizes, old)
  redis.call('ZREM', index, old)
end
while true do
  local oldest = redis.call('ZRANGE', index, 0, 0)
  if #oldest == 0 or redis.call('EXISTS', P .. 'url:' .. oldest[1]) == 1 then break end
  forget(oldest[1])
end
while tonumber(redis.call('GET', total) or '0') + size > tonumber(ARGV[5]) do
  local oldest = redis.call('ZRANGE', index, 0, 0)
  if #oldest == 0 then break end
  forget(oldest[1])
end
redis.call('SET', P .. 'url:' .. id, ARGV[3], 'PX', ARGV[4])
redis.call('ZADD', index, redis.call('INCR', P .. 'url_seq'), id)
redis.call('HSET', sizes, id, size)
redis.call('INCRBY', total, size)
return 1
"""


class RedisUrlStore:
    """id -> file bytes in Redis, each for `ttl_s` seconds, at most `max_bytes` in all."""

    def __init__(self, link: RedisLink, ttl_s: float, max_bytes: int):
        self.link, self.ttl_s, self.max_bytes = link, ttl_s, max_bytes
        self._put: AsyncScript = link.client.register_script(PUT)

    async def put(self, data: bytes) -> str:
        check_fits(data, self.max_bytes)
        key = new_id()
        async with self.link.guard():
            await self.link.run(self._put, [PREFIX, key, data, max(1, int(self.ttl_s * 1000)), self.max_bytes])
        return key

    async def size_bytes(self) -> int:
        """The bytes of the images kept now."""
        async with self.link.guard():
            return int(await self.link.client.get(self.link.key("url_bytes")) or 0)

    async def get(self, key: str) -> Optional[bytes]:
        async with self.link.guard():
            return await self.link.client.get(self.link.key("url", key))

    async def expires_in(self, key: str) -> float:
        async with self.link.guard():
            left_ms = await self.link.client.pttl(self.link.key("url", key))
        return max(0.0, left_ms / 1000)
