"""Async jobs' records and events, in a store with a small interface (`JobStore`), so that
another implementation can keep them outside the process.

A `JobRecord` is plain data, no engine objects: what `GET /v1/images/jobs/{id}` shows
(status, progress, times in unix seconds, and once the job ended either its images
response `result`, built once, or an OpenAI error object `error`), plus its owner (a
digest of the API key that made it; None without keys) and its webhook URL. A job's
events are numbered from 1, in order; `events_after(id, n)` returns those after event n,
waiting up to `wait_s` seconds for one when there is none yet (a resumable SSE stream).
A final record never changes: `put` over it is refused (False), so that of two replicas
ending one job (one completes it, the other cancels it) only the first one's end holds.

`MemoryJobStore` keeps both in this process (server/state/redis/store.py: in Redis, shared by
every replica). A finished record lives `ttl_s` seconds after it ended (its `expires_at`);
then it is gone (404, like an id never seen). At most `max_kept` finished records, and
their results and events within `max_bytes`, are kept: beyond that the oldest finished go
first (the newest always stays). Records of jobs not yet finished are never evicted: the
engine's queue bounds them.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Protocol

Status = Literal["queued", "in_progress", "completed", "failed", "cancelled", "expired"]
FINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "expired"})
EVENT_PREFIX = "image.job"


@dataclass
class JobRecord:
    """One async job as the API shows it (times: unix seconds; `progress`: 0 to 1)."""

    id: str
    operation: str  # "generation", "edit", "variation", "interpolation", "text_diff"
    created_at: int
    owner: Optional[str] = None
    status: Status = "queued"
    progress: float = 0.0
    started_at: Optional[int] = None
    completed_at: Optional[int] = None
    expires_at: Optional[int] = None
    result: Optional[dict[str, Any]] = None  # the images response, as the synchronous call answers
    error: Optional[dict[str, Any]] = None  # {message, type, param, code}
    webhook_url: Optional[str] = None
    replica: Optional[str] = None  # with the global queue: the replica that runs (or ran) it
    listed: bool = True  # False: a synchronous request's record in the global queue (never listed)

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    def to_api(self, queue_position: Optional[int] = None) -> dict[str, Any]:
        """The job object (`queue_position`: jobs ahead of it while queued, else None;
        `replica` only where the global queue ran it)."""
        extra = {"replica": self.replica} if self.replica is not None else {}
        return {**extra, "id": self.id, "object": "image.job", "operation": self.operation, "status": self.status,
                "progress": self.progress, "queue_position": queue_position if self.status == "queued" else None,
                "created_at": self.created_at, "started_at": self.started_at, "completed_at": self.completed_at,
                "expires_at": self.expires_at, "result": self.result, "error": self.error}

    def to_json(self) -> str:
        """The whole record (owner and webhook included) as JSON, for a store outside the process."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> JobRecord:
        """A record from `to_json`'s text; fields this version does not know are ignored (a
        newer replica's, during a rolling update)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


@dataclass(frozen=True)
class JobEvent:
    """One event of a job: its number (from 1), its type (`image.job.progress`, ...) and data."""

    id: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)


class JobStore(Protocol):
    """Where async jobs' records and events live. Every method runs on the event loop."""

    async def put(self, record: JobRecord, fence: Optional[str] = None) -> bool:
        """Insert or replace a record (a copy is kept: change a record, then put it again);
        False, and nothing changes, when the kept record is final. `fence` (here and below):
        the writer's fencing token, for a job of the global queue (server/state/redis/queue.py);
        the write is refused when the job was claimed under another one since. None: any
        writer (an API cancel, a job of this process)."""

    async def get(self, job_id: str) -> Optional[JobRecord]:
        """The record (a copy), or None when unknown, deleted or expired."""

    async def list(self, owner: Optional[str], limit: int, after: Optional[str] = None) -> tuple[list[JobRecord], bool]:
        """Up to `limit` records of `owner` (None: every record), newest first, starting after
        the record `after`; and whether more follow. KeyError if `after` is not kept."""

    async def delete(self, job_id: str) -> bool:
        """Drop a record and its events; False if there was none."""

    async def append_event(self, job_id: str, type: str, data: dict[str, Any],
                           fence: Optional[str] = None) -> Optional[JobEvent]:
        """Add the job's next event (None if the record is gone)."""

    async def advance(self, record: JobRecord, type: str, data: dict[str, Any],
                      fence: Optional[str] = None) -> Optional[JobEvent]:
        """`put` of a record not yet final and `append_event` of its event, as one change (a
        progress report); None, and nothing changes, when the kept record is final or gone.
        A report that repeats the last one (the same record, event type and data, under the
        same fence: a retried call whose answer was lost) returns that event and appends nothing."""

    async def events_after(self, job_id: str, after: int, wait_s: float = 0.0) -> list[JobEvent]:
        """The job's events numbered above `after`; with none yet, wait up to `wait_s` seconds
        for one (returns [] on timeout, or at once when the record is gone)."""


class MemoryJobStore:
    """A JobStore in this process's memory, bounded by count, bytes and age."""

    def __init__(self, ttl_s: float, max_kept: int, max_bytes: int, clock: Callable[[], float] = time.time):
        self.ttl_s, self.max_kept, self.max_bytes, self.clock = ttl_s, max_kept, max_bytes, clock
        self._records: OrderedDict[str, JobRecord] = OrderedDict()  # creation order
        self._events: dict[str, list[JobEvent]] = {}
        self._sizes: dict[str, int] = {}  # approximate bytes of a record's result, error and events
        self._finished: OrderedDict[str, float] = OrderedDict()  # id -> expiry, in the order they ended
        self._changed: dict[str, asyncio.Event] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def put(self, record: JobRecord, fence: Optional[str] = None) -> bool:
        self._purge_expired()
        job_id = record.id
        old = self._records.get(job_id)
        if old is not None and old.finished:
            return False
        self._records[job_id] = copy.copy(record)
        self._events.setdefault(job_id, [])
        if old is None or old.result is not record.result or old.error is not record.error:
            self._resize(job_id, _size(record.result) + _size(record.error) + self._event_bytes(job_id))
        if record.finished and job_id not in self._finished:
            self._finished[job_id] = record.expires_at or self.clock() + self.ttl_s
            self._evict()
        return True

    async def get(self, job_id: str) -> Optional[JobRecord]:
        self._purge_expired()
        record = self._records.get(job_id)
        return copy.copy(record) if record is not None else None

    async def list(self, owner: Optional[str], limit: int, after: Optional[str] = None) -> tuple[list[JobRecord], bool]:
        self._purge_expired()
        if after is not None and after not in self._records:
            raise KeyError(after)
        ids = list(reversed(self._records))
        if after is not None:
            ids = ids[ids.index(after) + 1:]
        mine = (self._records[i] for i in ids if owner is None or self._records[i].owner == owner)
        page = [copy.copy(r) for r, _ in zip(mine, range(limit + 1))]
        return page[:limit], len(page) > limit

    async def delete(self, job_id: str) -> bool:
        found = job_id in self._records
        self._drop(job_id)
        return found

    async def append_event(self, job_id: str, type: str, data: dict[str, Any],
                           fence: Optional[str] = None) -> Optional[JobEvent]:
        events = self._events.get(job_id)
        if events is None or job_id not in self._records:
            return None
        event = JobEvent(len(events) + 1, type, data)
        events.append(event)
        self._resize(job_id, self._sizes.get(job_id, 0) + _size(data))
        self._wake(job_id)
        return event

    async def advance(self, record: JobRecord, type: str, data: dict[str, Any],
                      fence: Optional[str] = None) -> Optional[JobEvent]:
        kept = self._records.get(record.id)
        if kept is None or kept.finished or record.finished:
            return None
        last = self._events[record.id][-1] if self._events.get(record.id) else None
        if last is not None and (last.type, last.data) == (type, data) and kept.to_json() == record.to_json():
            return last
        await self.put(record)
        return await self.append_event(record.id, type, data)

    async def events_after(self, job_id: str, after: int, wait_s: float = 0.0) -> list[JobEvent]:
        events = self._events.get(job_id)
        if events is None:
            return []
        if len(events) <= after and wait_s > 0:
            changed = self._changed.setdefault(job_id, asyncio.Event())
            try:
                await asyncio.wait_for(changed.wait(), wait_s)
            except asyncio.TimeoutError:
                return []
            events = self._events.get(job_id, [])
        return list(events[after:])

    # ---- bounds ------------------------------------------------------------------------

    def _wake(self, job_id: str) -> None:
        """Wake whoever waits for the job's next event."""
        changed = self._changed.pop(job_id, None)
        if changed is not None:
            changed.set()

    def _event_bytes(self, job_id: str) -> int:
        return sum(_size(e.data) for e in self._events.get(job_id, ()))

    def _resize(self, job_id: str, size: int) -> None:
        self._bytes += size - self._sizes.get(job_id, 0)
        self._sizes[job_id] = size

    def _purge_expired(self) -> None:
        """Drop finished records past their expiry (they ended in expiry order: one TTL for all)."""
        now = self.clock()
        while self._finished:
            job_id, expires = next(iter(self._finished.items()))
            if expires > now:
                break
            self._drop(job_id)

    def _evict(self) -> None:
        """The oldest finished records go while too many are kept or they take too many bytes."""
        while len(self._finished) > 1 and (len(self._finished) > self.max_kept or self._bytes > self.max_bytes):
            self._drop(next(iter(self._finished)))

    def _drop(self, job_id: str) -> None:
        self._records.pop(job_id, None)
        self._events.pop(job_id, None)
        self._finished.pop(job_id, None)
        self._resize(job_id, 0)
        self._sizes.pop(job_id, None)
        self._wake(job_id)


def _size(value: Any) -> int:
    """Approximate bytes a JSON value holds (its serialized length)."""
    return 0 if value is None else len(json.dumps(value))
