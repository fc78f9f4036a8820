"""The global queue in Redis: a job accepted by any replica waits here and runs on whichever
replica has a free slot first.

Keys (prefix `unclip:`, server/state/redis/link.py):

- `queue`: a sorted set of waiting job ids, scored by arrival plus estimated cost in ms
  (the scheduler's virtual finish, server/engine/scheduler.py); at most `bound` wait (429 beyond);
- `spec:<id>`: the job's spec (JSON, server/requests/spec.py), expiring with the job;
- `lease:<id>`: the replica running it, with a TTL of `lease_s`, renewed by that replica;
- `claimed`: the claimed ids, scored by their lease's last known expiry (ms), for the reaper;
- `attempts:<id>`: how many times a claim of it was lost;
- the channel `queued`: a message each time jobs are queued (or queued again), so that the
  replicas with a free slot claim at once instead of polling.

Each step is one Lua script, atomic in Redis: a job is claimed by one replica, and a lost
lease is handled by one reaper, which puts the job back in front of the queue, or, after
MAX_ATTEMPTS lost claims, reports it failed.
"""

from __future__ import annotations

import time
from typing import Optional

from redis.commands.core import AsyncScript

from .link import PREFIX, RedisLink

MAX_ATTEMPTS = 2  # claims of one job that may be lost before it fails (replica_lost)

# ARGV: prefix, id, spec, score, bound, ttl_ms. {1, depth} queued; {0, depth} full.
PUSH = """
local P = ARGV[1]
local depth = redis.call('ZCARD', P .. 'queue')
if depth >= tonumber(ARGV[5]) then return {0, depth} end
redis.call('SET', P .. 'spec:' .. ARGV[2], ARGV[3], 'PX', ARGV[6])
redis.call('ZADD', P .. 'queue', ARGV[4], ARGV[2])
redis.call('PUBLISH', P .. 'queued', ARGV[2])
return {1, depth + 1}
"""

# ARGV: prefix, replica, lease_ms, now_ms. {id, spec} of the next job, claimed; or nil.
CLAIM = """
local P = ARGV[1]
while true do
  local next = redis.call('ZPOPMIN', P .. 'queue')
  if #next == 0 then return false end
  local id = next[1]
  local spec = redis.call('GET', P .. 'spec:' .. id)
  if spec then
    redis.call('SET', P .. 'lease:' .. id, ARGV[2], 'PX', ARGV[3])
    redis.call('ZADD', P .. 'claimed', tonumber(ARGV[4]) + tonumber(ARGV[3]), id)
    return {id, spec}
  end
end
"""

# ARGV: prefix, replica, lease_ms, now_ms, ids... The ids whose lease is no longer ours.
RENEW = """
local P, lost = ARGV[1], {}
for i = 5, #ARGV do
  local lease = P .. 'lease:' .. ARGV[i]
  if redis.call('GET', lease) == ARGV[2] then
    redis.call('PEXPIRE', lease, ARGV[3])
    redis.call('ZADD', P .. 'claimed', tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

# ARGV: prefix, id. The job ended: its claim and spec go.
DONE = """
local P, id = ARGV[1], ARGV[2]
redis.call('DEL', P .. 'lease:' .. id, P .. 'spec:' .. id, P .. 'attempts:' .. id)
redis.call('ZREM', P .. 'claimed', id)
redis.call('ZREM', P .. 'queue', id)
return 1
"""

# ARGV: prefix, now_ms, max_attempts, ttl_ms. {requeued ids, failed ids}.
REAP = """
local P, requeued, failed = ARGV[1], {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'claimed', '-inf', ARGV[2])) do
  if redis.call('EXISTS', P .. 'lease:' .. id) == 0 then
    redis.call('ZREM', P .. 'claimed', id)
    local attempts = redis.call('INCR', P .. 'attempts:' .. id)
    redis.call('PEXPIRE', P .. 'attempts:' .. id, ARGV[4])
    if attempts < tonumber(ARGV[3]) and redis.call('EXISTS', P .. 'spec:' .. id) == 1 then
      redis.call('ZADD', P .. 'queue', 0, id)
      table.insert(requeued, id)
    else
      redis.call('DEL', P .. 'spec:' .. id, P .. 'attempts:' .. id)
      table.insert(failed, id)
    end
  end
end
if #requeued > 0 then redis.call('PUBLISH', P .. 'queued', requeued[1]) end
return {requeued, failed}
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisQueue:
    """The global queue of every replica on one Redis; `replica` names this one in its leases."""

    def __init__(self, link: RedisLink, bound: int, lease_s: float, ttl_s: float, replica: str):
        self.link, self.bound, self.lease_s, self.ttl_s, self.replica = link, bound, lease_s, ttl_s, replica
        r = link.client
        self._push: AsyncScript = r.register_script(PUSH)
        self._claim: AsyncScript = r.register_script(CLAIM)
        self._renew: AsyncScript = r.register_script(RENEW)
        self._done: AsyncScript = r.register_script(DONE)
        self._reap: AsyncScript = r.register_script(REAP)

    @property
    def lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    async def push(self, job_id: str, spec: str, cost_s: Optional[float]) -> tuple[bool, int]:
        """Queue a job (False when `bound` jobs already wait) and the global depth."""
        score = int((time.time() + (cost_s or 0.0)) * 1000)
        async with self.link.guard():
            ok, depth = await self._push(args=[PREFIX, job_id, spec, score, self.bound, int(self.ttl_s * 1000)])
        return bool(ok), int(depth)

    async def depth(self) -> int:
        async with self.link.guard():
            return int(await self.link.client.zcard(self.link.key("queue")))

    async def positions(self, job_ids: list[str]) -> list[Optional[int]]:
        """How many jobs wait ahead of each of these (None: not waiting)."""
        async with self.link.guard():
            async with self.link.client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.zrank(self.link.key("queue"), job_id)
                return await pipe.execute()

    async def claim(self) -> Optional[tuple[str, str]]:
        """The next job (id, spec), now leased to this replica; None when none waits."""
        async with self.link.guard():
            got = await self._claim(args=[PREFIX, self.replica, self.lease_ms, int(time.time() * 1000)])
        return (_text(got[0]), _text(got[1])) if got else None

    async def renew(self, job_ids: list[str]) -> list[str]:
        """Renew this replica's leases; the ids whose lease was lost (another replica has them)."""
        if not job_ids:
            return []
        async with self.link.guard():
            lost = await self._renew(args=[PREFIX, self.replica, self.lease_ms, int(time.time() * 1000), *job_ids])
        return [_text(i) for i in lost]

    async def done(self, job_id: str) -> None:
        async with self.link.guard():
            await self._done(args=[PREFIX, job_id])

    async def reap(self) -> tuple[list[str], list[str]]:
        """Jobs whose lease expired: (put back in the queue, to fail)."""
        async with self.link.guard():
            requeued, failed = await self._reap(args=[PREFIX, int(time.time() * 1000), MAX_ATTEMPTS,
                                                      int(self.ttl_s * 1000)])
        return [_text(i) for i in requeued], [_text(i) for i in failed]
