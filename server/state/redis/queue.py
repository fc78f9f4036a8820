"""The global queue in Redis: a job accepted by any replica waits here and runs on whichever
replica has a free slot first.

Keys (prefix `unclip:`, server/state/redis/link.py):

- `queue`: a sorted set of waiting job ids, scored by arrival plus estimated cost in ms
  (the scheduler's virtual finish, server/engine/scheduler.py); at most `bound` wait (429 beyond);
- `spec:<id>`: a hash, `s` the job's spec (JSON, server/requests/spec.py) and `t` when it was
  queued (ms), expiring with the job;
- `lease:<id>`: the fencing token of the claim running it, with a TTL of `lease_s`, renewed
  by the replica that holds it;
- `claimed`: the claimed ids, scored by their lease's last known expiry (ms), for the reaper;
- `attempts:<id>`: how many times a claim of it was lost;
- `fences`: the counter the fencing tokens come from; the job's record (`job:<id>`,
  server/state/redis/store.py) keeps its current one in the field `f`;
- `claim:<nonce>`: what one claim call took, for a retry of the same call;
- the channel `queued`: a message each time jobs are queued (or queued again), so that the
  replicas with a free slot claim at once instead of polling.

Each step is one Lua script, atomic in Redis, and safe to run twice (redis-py retries a
command once after a dropped connection): a retried PUSH finds the spec and adds nothing, a
retried CLAIM (same nonce) returns the job the first one took. A job is claimed by one
replica at a time, under a new fencing token: the record accepts progress, the end and
DONE only with the current token, so a replica that stalled past its lease (its job since
reaped, maybe claimed again) writes nothing more. A lost lease is handled by one reaper,
inside the script: the job goes back to the front of the queue, or, after MAX_ATTEMPTS
lost claims, its record is made failed (`replica_lost`). Times are Redis's own (`TIME`),
so replicas' clocks neither order the queue nor age its jobs.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from redis.commands.core import AsyncScript

from .link import PREFIX, RedisLink
from .store import FAIL, FINALS, NOW

MAX_ATTEMPTS = 2  # claims of one job that may be lost before it fails (replica_lost)

# ARGV: prefix, id, spec, cost_ms, bound, ttl_ms. {1, depth} queued (or already); {0, depth} full.
PUSH = NOW + """
local P, id = ARGV[1], ARGV[2]
local spec = P .. 'spec:' .. id
local depth = redis.call('ZCARD', P .. 'queue')
if redis.call('EXISTS', spec) == 1 then return {1, depth} end
if depth >= tonumber(ARGV[5]) then return {0, depth} end
local now = now_ms()
redis.call('HSET', spec, 's', ARGV[3], 't', now)
redis.call('PEXPIRE', spec, ARGV[6])
redis.call('ZADD', P .. 'queue', now + tonumber(ARGV[4]), id)
redis.call('PUBLISH', P .. 'queued', id)
return {1, depth + 1}
"""

# ARGV: prefix, lease_ms, nonce. {id, spec, token, age_ms} of the next job whose record
# waits for it, now claimed; or nil. A job whose record is gone or final is dropped.
CLAIM = FINALS + NOW + """
local P, lease_ms = ARGV[1], tonumber(ARGV[2])
local nonce = P .. 'claim:' .. ARGV[3]
local now = now_ms()
local function taken(id, token)
  local spec = redis.call('HMGET', P .. 'spec:' .. id, 's', 't')
  if not spec[1] then return false end
  return {id, spec[1], token, tostring(now - tonumber(spec[2]))}
end
local seen = redis.call('GET', nonce)
if seen then
  local id, token = string.match(seen, '^(%S+) (%S+)$')
  return taken(id, token)
end
while true do
  local next = redis.call('ZPOPMIN', P .. 'queue')
  if #next == 0 then return false end
  local id = next[1]
  local job = P .. 'job:' .. id
  local status = redis.call('HGET', job, 's')
  if status and not FINAL[status] and redis.call('EXISTS', P .. 'spec:' .. id) == 1 then
    local token = tostring(redis.call('INCR', P .. 'fences'))
    redis.call('HSET', job, 'f', token)
    redis.call('SET', P .. 'lease:' .. id, token, 'PX', lease_ms)
    redis.call('ZADD', P .. 'claimed', now + lease_ms, id)
    redis.call('SET', nonce, id .. ' ' .. token, 'PX', lease_ms)
    return taken(id, token)
  end
  redis.call('DEL', P .. 'spec:' .. id, P .. 'attempts:' .. id)
end
"""

# ARGV: prefix, lease_ms, then id, token pairs. The ids whose lease is no longer that token's.
RENEW = NOW + """
local P, lease_ms, lost = ARGV[1], tonumber(ARGV[2]), {}
local now = now_ms()
for i = 3, #ARGV, 2 do
  local id, lease = ARGV[i], P .. 'lease:' .. ARGV[i]
  if redis.call('GET', lease) == ARGV[i + 1] then
    redis.call('PEXPIRE', lease, lease_ms)
    redis.call('ZADD', P .. 'claimed', now + lease_ms, id)
  else
    table.insert(lost, id)
  end
end
return lost
"""

# ARGV: prefix, id, token. The job ended: its claim and spec go. With a token, only while
# that claim holds the lease, or once the record is final (or gone) and that claim was its
# last: a claim whose lease ran out leaves the job to the reaper. 0 when nothing changed.
DONE = FINALS + """
local P, id, token = ARGV[1], ARGV[2], ARGV[3]
if token ~= '' and redis.call('GET', P .. 'lease:' .. id) ~= token then
  local status, fence = unpack(redis.call('HMGET', P .. 'job:' .. id, 's', 'f'))
  if (status and not FINAL[status]) or (fence and fence ~= token) then return 0 end
end
redis.call('DEL', P .. 'lease:' .. id, P .. 'spec:' .. id, P .. 'attempts:' .. id)
redis.call('ZREM', P .. 'claimed', id)
redis.call('ZREM', P .. 'queue', id)
return 1
"""

# ARGV: prefix, max_attempts, ttl_ms, error (JSON), finished_ttl_ms. {requeued ids, failed
# ids}: the failed ones' records are final already.
REAP = FAIL + """
local P, requeued, failed = ARGV[1], {}, {}
local now = now_ms()
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'claimed', '-inf', now)) do
  if redis.call('EXISTS', P .. 'lease:' .. id) == 0 then
    redis.call('ZREM', P .. 'claimed', id)
    local job = P .. 'job:' .. id
    if redis.call('EXISTS', job) == 1 then redis.call('HSET', job, 'f', '0') end
    local attempts = redis.call('INCR', P .. 'attempts:' .. id)
    redis.call('PEXPIRE', P .. 'attempts:' .. id, ARGV[3])
    if attempts < tonumber(ARGV[2]) and redis.call('EXISTS', P .. 'spec:' .. id) == 1 then
      redis.call('ZADD', P .. 'queue', 0, id)
      table.insert(requeued, id)
    else
      redis.call('DEL', P .. 'spec:' .. id, P .. 'attempts:' .. id)
      fail(id, ARGV[4], now, tonumber(ARGV[5]))
      table.insert(failed, id)
    end
  end
end
if #requeued > 0 then redis.call('PUBLISH', P .. 'queued', requeued[1]) end
return {requeued, failed}
"""


@dataclass(frozen=True)
class Claim:
    """A job this replica claimed: its id, spec (JSON), fencing token, and how long ago it
    was queued (seconds, by Redis's clock)."""

    id: str
    spec: str
    token: str
    age_s: float


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisQueue:
    """The global queue of every replica on one Redis. `ttl_s`: how long a queued job's spec
    lasts; `finished_ttl_s`: how long the record of a job the reaper fails is kept."""

    def __init__(self, link: RedisLink, bound: int, lease_s: float, ttl_s: float, finished_ttl_s: float = 3600.0):
        self.link, self.bound, self.lease_s, self.ttl_s = link, bound, lease_s, ttl_s
        self.finished_ttl_s = finished_ttl_s
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
        args = [PREFIX, job_id, spec, int((cost_s or 0.0) * 1000), self.bound, int(self.ttl_s * 1000)]
        async with self.link.guard():
            ok, depth = await self.link.run(self._push, args)
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

    async def claim(self) -> Optional[Claim]:
        """The next job, now leased to this replica under a new fencing token; None when
        none waits. One nonce per call: redis-py's retry of it returns the same job."""
        async with self.link.guard():
            got = await self.link.run(self._claim, [PREFIX, self.lease_ms, uuid.uuid4().hex])
        if not got:
            return None
        job_id, spec, token, age_ms = (_text(v) for v in got)
        return Claim(job_id, spec, token, int(age_ms) / 1000)

    async def renew(self, tokens: dict[str, str]) -> list[str]:
        """Renew the leases of these jobs (id -> token); the ids whose lease was lost (it
        expired, and the job may run elsewhere)."""
        if not tokens:
            return []
        pairs = [v for job_id, token in sorted(tokens.items()) for v in (job_id, token)]
        async with self.link.guard():
            lost = await self.link.run(self._renew, [PREFIX, self.lease_ms, *pairs])
        return [_text(i) for i in lost]

    async def done(self, job_id: str, token: str = "") -> bool:
        """The job ended: drop its claim and spec (False, and nothing changes, when the
        claim of `token` lost its lease and the job is not final: the reaper hands it on)."""
        async with self.link.guard():
            return bool(await self.link.run(self._done, [PREFIX, job_id, token]))

    async def reap(self, error: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Jobs whose lease expired: (put back in the queue, failed with `error`, an OpenAI
        error object, in their records)."""
        args = [PREFIX, MAX_ATTEMPTS, int(self.ttl_s * 1000), json.dumps(error), int(self.finished_ttl_s * 1000)]
        async with self.link.guard():
            requeued, failed = await self.link.run(self._reap, args)
        return [_text(i) for i in requeued], [_text(i) for i in failed]
