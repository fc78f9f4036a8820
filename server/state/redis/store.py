"""A JobStore in Redis (server/state/records.py's interface), shared by every replica that
names the same `UNCLIP_REDIS_URL`: a job made on one replica is polled, followed, listed,
cancelled and deleted on any other.

Keys (prefix `unclip:`, server/state/redis/link.py):

- `job:<id>`: a hash, `s` the status, `o` the owner ("" without keys), `r` the record as
  JSON (`JobRecord.to_json`), and, once the global queue claimed it, `f` the fencing token
  of its current claim (server/state/redis/queue.py); it expires with the record: `expires_at` once finished, and
  `pending_ttl_s` after its last change before (so that the record of a job whose replica
  died goes too);
- `events:<id>`: a Stream, one entry per event, with the ids `0-1`, `0-2`, ...: event n
  is entry `0-n` (`XADD 0-*` numbers them in Redis, whichever replica appends), so an SSE
  client's `Last-Event-ID: n` resumes on any replica (`XRANGE (0-n +`, then `XREAD BLOCK`
  for the next one). It expires with its record;
- `jobs` and `owner:<owner>`: sorted sets of every record and of one owner's, scored by a
  counter (`seq`) taken when a record is first put: listing is newest first, pages start
  after a given id;
- `finished`: the finished records, `"<id> <owner>"` scored by their expiry (ms, Redis's
  clock), and `ended`: the same members scored by when they ended (µs, Redis's clock).
  Putting a finished record drops the expired ones and, beyond `max_kept`, the ones that
  ended first (the newest always stays), with their events and index entries. A record that expired unfinished
  leaves its index entries, dropped when a listing meets them.

Each change is one Lua script, atomic in Redis: a final record is never replaced (the
first replica to end a job wins), no event is added to a record that is gone, and a
write that carries a fencing token is refused once the job was claimed under another one
(a replica that stalled past its lease writes nothing more). The scripts compute their
keys, so this needs one Redis (or a primary with replicas), not a Redis Cluster. Nothing
here may be evicted (server/state/redis/policy.py checks `noeviction`): the finished
records are bounded by count here, the URL images by bytes in server/state/redis/urls.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Optional

from redis.commands.core import AsyncScript

from ..records import EVENT_PREFIX, FINAL, JobEvent, JobRecord
from .link import PREFIX, RedisLink

BLOCK_S = 1.0  # one XREAD BLOCK at most; a longer wait is several (the record may go meanwhile)

# Lua: drop a finished record ("<id> <owner>") with its events and index entries.
DROP = """
local P = ARGV[1]
local function drop(member)
  local id, owner = string.match(member, '^(%S+) ?(%S*)$')
  redis.call('DEL', P .. 'job:' .. id, P .. 'events:' .. id)
  redis.call('ZREM', P .. 'jobs', id)
  if owner ~= '' then redis.call('ZREM', P .. 'owner:' .. owner, id) end
  redis.call('ZREM', P .. 'finished', member)
  redis.call('ZREM', P .. 'ended', member)
end
"""

# Lua: the final statuses, a set.
FINALS = "local FINAL = {%s}\n" % ", ".join(f"{status}=true" for status in sorted(FINAL))

# Lua: Redis's clock in ms (every replica reads the same one).
NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function now_us()  -- two scripts never share one: the order in which they ran
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

# Lua: whether `fence` (a fencing token, '' for any writer) may write the job's record: the
# record's `f` is the token of its current claim (server/state/redis/queue.py).
FENCED = """
local function fenced(job, fence)
  if fence == '' then return true end
  local current = redis.call('HGET', job, 'f')
  return not current or current == fence
end
"""

# Lua: make a record not yet final `failed` with `error` (an OpenAI error object as JSON),
# kept `ttl_ms` from `now` (ms), with its terminal event; the reaper's end of a job.
FAIL = FINALS + NOW + """
local P = ARGV[1]
local function fail(id, error, now, ttl_ms)
  local job = P .. 'job:' .. id
  local old, raw, owner = unpack(redis.call('HMGET', job, 's', 'r', 'o'))
  if not old or FINAL[old] then return end
  local record, at = cjson.decode(raw), math.floor(now / 1000)
  record.status, record.error = 'failed', cjson.decode(error)
  record.completed_at, record.expires_at = at, at + math.floor(ttl_ms / 1000)
  redis.call('HSET', job, 's', 'failed', 'r', cjson.encode(record))
  redis.call('PEXPIRE', job, ttl_ms)
  if record.listed then
    redis.call('ZADD', P .. 'finished', now + ttl_ms, id .. ' ' .. owner)
    redis.call('ZADD', P .. 'ended', now_us(), id .. ' ' .. owner)
  end
  local events = P .. 'events:' .. id
  redis.call('XADD', events, '0-*', 't', '%(event)s.failed', 'd', '{"type":"%(event)s.failed"}')
  redis.call('PEXPIRE', events, ttl_ms)
end
""" % {"event": EVENT_PREFIX}

# ARGV: prefix, id, owner, status, json, ttl_ms, finished (0/1), max_kept, listed (0/1), fence.
PUT = DROP + FINALS + NOW + FENCED + """
local id, owner = ARGV[2], ARGV[3]
local job = P .. 'job:' .. id
local old = redis.call('HGET', job, 's')
if old and FINAL[old] then
  if redis.call('HGET', job, 'r') == ARGV[5] then return 1 end  -- a retry of the write that made it final
  return 0
end
if not fenced(job, ARGV[10]) then return 0 end
redis.call('HSET', job, 's', ARGV[4], 'o', owner, 'r', ARGV[5])
redis.call('PEXPIRE', job, ARGV[6])
redis.call('PEXPIRE', P .. 'events:' .. id, ARGV[6])
if ARGV[9] == '0' then return 1 end
if not redis.call('ZSCORE', P .. 'jobs', id) then
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('ZADD', P .. 'jobs', seq, id)
  if owner ~= '' then redis.call('ZADD', P .. 'owner:' .. owner, seq, id) end
end
if ARGV[7] == '1' then
  local now = now_ms()
  redis.call('ZADD', P .. 'finished', now + tonumber(ARGV[6]), id .. ' ' .. owner)
  redis.call('ZADD', P .. 'ended', now_us(), id .. ' ' .. owner)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', now)) do drop(m) end
  local over = redis.call('ZCARD', P .. 'ended') - math.max(1, tonumber(ARGV[8]))
  if over > 0 then
    for _, m in ipairs(redis.call('ZRANGE', P .. 'ended', 0, over - 1)) do drop(m) end
  end
end
return 1
"""

# ARGV: prefix, id. 1 if there was a record.
DELETE = DROP + """
local owner = redis.call('HGET', P .. 'job:' .. ARGV[2], 'o')
if not owner then return 0 end
drop(ARGV[2] .. ' ' .. owner)
return 1
"""

# ARGV: prefix, id, type, data (JSON), fence. The new entry's id, or nil when the record is
# gone (or claimed under another fence).
APPEND = FENCED + """
local P, id = ARGV[1], ARGV[2]
local job = P .. 'job:' .. id
local ttl = redis.call('PTTL', job)
if ttl == -2 or not fenced(job, ARGV[5]) then return false end
local events = P .. 'events:' .. id
local entry = redis.call('XADD', events, '0-*', 't', ARGV[3], 'd', ARGV[4])
if ttl > 0 then redis.call('PEXPIRE', events, ttl) end
return entry
"""

# ARGV: prefix, id, status, json, ttl_ms, type, data (JSON), fence. The new entry's id, or
# nil (and nothing changes) when the record is final, gone or claimed under another fence:
# a progress report in one round trip. A retry (the record already as it would leave it, the
# last event the same, from the same claim: entries keep its fence as `f`) returns the last
# entry's id and appends nothing.
ADVANCE = FINALS + FENCED + """
local P, id = ARGV[1], ARGV[2]
local job, events = P .. 'job:' .. id, P .. 'events:' .. id
local old = redis.call('HGET', job, 's')
if not old or FINAL[old] or not fenced(job, ARGV[8]) then return false end
if redis.call('HGET', job, 'r') == ARGV[4] then  -- the record as this report leaves it: a retry?
  local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)[1]
  local f = last and last[2]
  if f and f[2] == ARGV[6] and f[4] == ARGV[7] and f[6] == ARGV[8] then return last[1] end
end
redis.call('HSET', job, 's', ARGV[3], 'r', ARGV[4])
redis.call('PEXPIRE', job, ARGV[5])
local entry = redis.call('XADD', events, '0-*', 't', ARGV[6], 'd', ARGV[7], 'f', ARGV[8])
redis.call('PEXPIRE', events, ARGV[5])
return entry
"""


class RedisJobStore:
    """A JobStore in Redis: records with their TTL, events in a Stream per job, listing per
    owner newest first, at most `max_kept` finished records."""

    def __init__(self, link: RedisLink, ttl_s: float, max_kept: int, pending_ttl_s: float):
        self.link, self.ttl_s, self.max_kept, self.pending_ttl_s = link, ttl_s, max_kept, pending_ttl_s
        r = link.client
        self._put: AsyncScript = r.register_script(PUT)
        self._delete: AsyncScript = r.register_script(DELETE)
        self._append: AsyncScript = r.register_script(APPEND)
        self._advance: AsyncScript = r.register_script(ADVANCE)

    async def put(self, record: JobRecord, fence: Optional[str] = None) -> bool:
        now = time.time()
        lasts = (record.expires_at or now + self.ttl_s) - now if record.finished else self.pending_ttl_s
        args = [PREFIX, record.id, record.owner or "", record.status, record.to_json(), max(1, int(lasts * 1000)),
                int(record.finished), self.max_kept, int(record.listed), fence or ""]
        async with self.link.guard():
            return bool(await self.link.run(self._put, args))

    async def get(self, job_id: str) -> Optional[JobRecord]:
        async with self.link.guard():
            raw = await self.link.client.hget(self.link.key("job", job_id), "r")
        return JobRecord.from_json(raw) if raw is not None else None

    async def list(self, owner: Optional[str], limit: int, after: Optional[str] = None) -> tuple[list[JobRecord], bool]:
        index = self.link.key("owner", owner) if owner is not None else self.link.key("jobs")
        async with self.link.guard():
            start = await self._start(index, after)
            page, gone = await self._page(index, start, limit + 1)
            if gone:
                await self.link.client.zrem(index, *gone)
        return page[:limit], len(page) > limit

    async def delete(self, job_id: str) -> bool:
        async with self.link.guard():
            return bool(await self.link.run(self._delete, [PREFIX, job_id]))

    async def append_event(self, job_id: str, type: str, data: dict[str, Any],
                           fence: Optional[str] = None) -> Optional[JobEvent]:
        args = [PREFIX, job_id, type, json.dumps(data, separators=(",", ":")), fence or ""]
        async with self.link.guard():
            entry = await self.link.run(self._append, args)
        return JobEvent(event_number(entry), type, data) if entry is not None else None

    async def advance(self, record: JobRecord, type: str, data: dict[str, Any],
                      fence: Optional[str] = None) -> Optional[JobEvent]:
        if record.finished:
            return None
        args = [PREFIX, record.id, record.status, record.to_json(), max(1, int(self.pending_ttl_s * 1000)), type,
                json.dumps(data, separators=(",", ":")), fence or ""]
        async with self.link.guard():
            entry = await self.link.run(self._advance, args)
        return JobEvent(event_number(entry), type, data) if entry is not None else None

    async def events_after(self, job_id: str, after: int, wait_s: float = 0.0) -> list[JobEvent]:
        key, last = self.link.key("events", job_id), f"0-{after}"
        async with self.link.guard():
            events = [to_event(e) for e in await self.link.client.xrange(key, f"({last}", "+")]
            deadline = asyncio.get_running_loop().time() + wait_s
            while not events and (left := deadline - asyncio.get_running_loop().time()) > 0:
                if not await self.link.client.exists(self.link.key("job", job_id)):
                    return []
                got = await self.link.client.xread({key: last}, block=max(1, int(min(left, BLOCK_S) * 1000)))
                events = [to_event(e) for _, entries in got for e in entries]
        return events

    # ---- listing -----------------------------------------------------------------------

    async def _start(self, index: str, after: Optional[str]) -> int:
        """The rank (newest first) the page starts at: 0, or just after `after` (KeyError
        if `after` is not listed)."""
        if after is None:
            return 0
        rank = await self.link.client.zrevrank(index, after)
        if rank is None:
            raise KeyError(after)
        return rank + 1

    async def _page(self, index: str, start: int, count: int) -> tuple[list[JobRecord], list[bytes]]:
        """Up to `count` records from rank `start` on, and the listed ids whose record is gone."""
        page: list[JobRecord] = []
        gone: list[bytes] = []
        while len(page) < count:
            ids = await self.link.client.zrevrange(index, start, start + count - 1)
            if not ids:
                break
            async with self.link.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self.link.key("job", job_id.decode()), "r")
                raws = await pipe.execute()
            page += [JobRecord.from_json(raw) for raw in raws if raw is not None]
            gone += [job_id for job_id, raw in zip(ids, raws) if raw is None]
            start += len(ids)
        return page, gone


def event_number(entry_id: bytes | str) -> int:
    """The event number of a Stream entry id `0-n`."""
    return int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).rpartition("-")[2])


def to_event(entry: tuple[bytes, dict[bytes, bytes]]) -> JobEvent:
    """A Stream entry (id, {t: type, d: data as JSON}) as a JobEvent."""
    entry_id, fields = entry
    return JobEvent(event_number(entry_id), fields[b"t"].decode(), json.loads(fields[b"d"]))
