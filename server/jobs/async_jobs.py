"""The async jobs of this process (`Prefer: respond-async`): their records and events in a
`JobStore` (server/state/records.py), the engine jobs behind the records not yet finished
(to cancel them, and to tell a queued job's place), the tasks that follow them
(server/delivery/follow.py) and the webhooks they send (server/jobs/webhooks.py).

A record moves queued -> in_progress -> completed | failed | cancelled | expired (the
engine's deadline passed). `finish` makes it final exactly once: it sets the end time and
the expiry, counts the outcome, sends the webhook and appends the terminal event
(`image.job.<status>`). A cancel is final at once, even for a running job (the engine stops
it at its next step boundary; a result that comes meanwhile is dropped).

With a store shared by several replicas (server/state/redis/store.py) a job may be cancelled or
deleted on a replica that does not run it: that one ends the record and publishes the
cancel on the `CancelBus` (server/state/cancels.py); the replica running the job stops it when
it hears so, and also whenever it finds the record of one of its jobs final or gone (at
each progress report of a listed job, and when the bus reconciles). A store that is down
drops progress events (the job goes on) and delays the end of a job, retried for up to
SETTLE_S.
Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Coroutine, Iterator, Optional, TypeVar

from ..engine.core import Engine, Job
from ..errors import StoreUnavailable
from ..state.cancels import CancelBus, LocalCancels
from ..state.records import EVENT_PREFIX, JobRecord, JobStore, Status
from ..state.redis.queue import RedisQueue
from .webhooks import WebhookSender, check_url

log = logging.getLogger(__name__)

SETTLE_S = 30.0  # how long a follower retries ending its job's record while the store is down
SETTLE_RETRY_S = 1.0
T = TypeVar("T")


async def while_store_down(make: Callable[[], Awaitable[T]]) -> T:
    """`make()`, tried again every SETTLE_RETRY_S while the store is down, for up to SETTLE_S
    (then its StoreUnavailable is raised): a job's end, and its `url` body, wait out a Redis
    restart."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            return await make()
        except StoreUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(SETTLE_RETRY_S)


def wall_time(monotonic_s: float) -> int:
    """A time.monotonic() instant as unix seconds."""
    return int(time.time() - (time.monotonic() - monotonic_s))


class AsyncJobs:
    """Async jobs: their store, the engine jobs behind them, their followers and webhooks,
    and the bus on which cancels reach the replica running the job. `on_end(kind, status)`
    hears every job that ends (metrics)."""

    def __init__(self, store: JobStore, ttl_s: float, webhooks: Optional[WebhookSender] = None,
                 on_end: Optional[Callable[[str, str], None]] = None, cancels: Optional[CancelBus] = None,
                 queue: Optional[RedisQueue] = None):
        self.store, self.ttl_s, self.webhooks, self.on_end, self.queue = store, ttl_s, webhooks, on_end, queue
        self.cancels: CancelBus = cancels or LocalCancels()
        self._engine_jobs: dict[str, Job] = {}
        self._records: dict[str, JobRecord] = {}  # the record each of them last wrote
        self._fences: dict[str, str] = {}  # the fencing tokens of the global queue's jobs run here
        self._abandoned: set[str] = set()  # jobs whose claim was lost: their followers write nothing
        self._tasks: set[asyncio.Task] = set()
        self._listener: Optional[asyncio.Task] = None

    def start(self) -> None:
        """Hear the cancels of other replicas (in the background, until `close`)."""
        self._listener = asyncio.create_task(self.cancels.listen(self._stop_here, self._reconcile),
                                             name="cancel-listener")

    def check_webhook(self, url: str) -> str:
        """The request's webhook URL if its host is allowed (400 naming `webhook_url` otherwise)."""
        return check_url(url, self.webhooks.hosts if self.webhooks is not None else ())

    async def add(self, record: JobRecord, job: Job, follower: Coroutine[Any, Any, None]) -> None:
        """Keep a new record, the engine job behind it, and run its follower in the background
        (a store that is down cancels the engine job and raises StoreUnavailable)."""
        try:
            await self.store.put(record)
        except BaseException:
            job.cancel()
            follower.close()
            raise
        self.adopt(record, job, follower)

    def adopt(self, record: JobRecord, job: Job, follower: Coroutine[Any, Any, None],
              fence: Optional[str] = None) -> None:
        """Keep the engine job behind a stored record and run its follower in the background
        (`add`, or a job of the global queue that this replica claimed under `fence`, its
        fencing token: every write of its follower carries it)."""
        self._engine_jobs[record.id], self._records[record.id] = job, record
        if fence is not None:
            self._fences[record.id] = fence
        task = asyncio.create_task(follower, name=f"follow-{record.id}")
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._followed(done, record.id))

    def when_store_answers(self, make: Callable[[], Awaitable[Any]], name: str) -> None:
        """Run `make()` in the background, waiting out a store that is down for up to
        SETTLE_S (`while_store_down`); `close` waits for it as for the followers."""
        async def run() -> None:
            try:
                await while_store_down(make)
            except StoreUnavailable:
                log.error("%s: the store stayed unreachable; given up", name)

        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _followed(self, task: asyncio.Task, job_id: str) -> None:
        """A follower ended (settled, failed or cancelled): nothing more of its job is kept."""
        self._tasks.discard(task)
        self._abandoned.discard(job_id)

    async def views(self, records: list[JobRecord], engine: Optional[Engine]) -> list[dict[str, Any]]:
        """The job objects, with the live state of their engine jobs where this process runs
        them; a job still in the global queue has its place there."""
        waiting = [r.id for r in records if r.status == "queued" and r.id not in self._engine_jobs]
        places = dict(zip(waiting, await self.queue.positions(waiting))) if self.queue and waiting else {}
        return [self._view(r, engine, places.get(r.id)) for r in records]

    async def view(self, record: JobRecord, engine: Optional[Engine]) -> dict[str, Any]:
        return (await self.views([record], engine))[0]

    def _view(self, record: JobRecord, engine: Optional[Engine], place: Optional[int]) -> dict[str, Any]:
        job = self._engine_jobs.get(record.id)
        if job is None or record.finished:
            return record.to_api(queue_position=place)
        if job.state == "running" and record.status == "queued":
            record.status, record.started_at = "in_progress", wall_time(job.started)
        position = engine.queue_position(job) if engine is not None and job.state == "queued" else None
        return record.to_api(queue_position=position)

    async def progress(self, job_id: str, job: Job, fraction: float, event: dict[str, Any]) -> None:
        """The engine job advanced: the record is in progress at `fraction`; append `event`
        (one store change). A record found final or gone (cancelled or deleted on another
        replica) stops the job. A synchronous request's record (not listed) has no progress:
        its one reader waits for the end, and its cancel comes through the bus."""
        record = self._records.get(job_id)
        if record is None or not record.listed:
            return
        if record.started_at is None:
            record.started_at = wall_time(job.started) if job.started is not None else int(time.time())
        record.status, record.progress = "in_progress", max(record.progress, fraction)
        with self._unless_down(job_id):
            if await self.store.advance(record, f"{EVENT_PREFIX}.progress", event, self._fences.get(job_id)) is None:
                self._stop_here(job_id)

    async def event(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        """Append an event of the job unless it is gone or finished."""
        with self._unless_down(job_id):
            record = await self.store.get(job_id)
            if record is not None and not record.finished:
                await self.store.append_event(job_id, f"{EVENT_PREFIX}.{kind}", data, self._fences.get(job_id))

    async def finish(self, job_id: str, status: Status, result: Optional[dict[str, Any]] = None,
                     error: Optional[dict[str, Any]] = None, started: Optional[float] = None,
                     fence: Optional[str] = None) -> Optional[JobRecord]:
        """Make the record final (once, whichever replica tries: a final or missing record
        is returned as it is); `started`: the engine job's start (monotonic), if it started;
        `fence`: the fencing token of the claim that ran it, if the global queue's."""
        return (await self._finish(job_id, status, result, error, started, fence))[0]

    async def _finish(self, job_id: str, status: Status, result: Optional[dict[str, Any]],
                      error: Optional[dict[str, Any]], started: Optional[float], fence: Optional[str],
                      tried: Optional[list[JobRecord]] = None) -> tuple[Optional[JobRecord], bool]:
        """`finish`, and whether this call made the record final. `tried` (a retry's memory,
        `settle`): the record an earlier attempt wrote, whose answer was lost with Redis (its
        write may have landed: then this call completes it, terminal event and announce)."""
        self._forget(job_id)
        record = await self.store.get(job_id)
        if record is None:
            return None, False
        if record.finished:
            if not (tried and record.to_json() == tried[0].to_json()):  # not this follower's earlier write
                return record, False
        else:
            now = int(time.time())
            if record.started_at is None and started is not None:
                record.started_at = wall_time(started)
            record.status, record.completed_at, record.expires_at = status, now, now + int(round(self.ttl_s))
            record.result, record.error = result, error
            if status == "completed":
                record.progress = 1.0
            if tried is not None:
                tried[:] = [record]
            if not await self.store.put(record, fence):  # another replica ended it (or claimed it) meanwhile
                return await self.store.get(job_id), False
        await self.store.append_event(job_id, f"{EVENT_PREFIX}.{status}", {"type": f"{EVENT_PREFIX}.{status}"})
        self.announce(record)
        return record, True

    async def settle(self, job_id: str, status: Status, result: Optional[dict[str, Any]] = None,
                     error: Optional[dict[str, Any]] = None, started: Optional[float] = None) -> bool:
        """`finish` for a follower whose job ended: while the store is down it is retried
        every SETTLE_RETRY_S for up to SETTLE_S, then given up (the job's record is lost).
        Nothing is written for a job whose claim was lost (`abandon`). Whether this made
        the record final (False: it ended otherwise, or is lost)."""
        fence = self._fences.get(job_id)
        if job_id in self._abandoned:
            self._abandoned.discard(job_id)
            return False
        tried: list[JobRecord] = []  # the final record this follower wrote: a retry may find it landed
        try:
            return (await while_store_down(lambda: self._finish(job_id, status, result, error, started, fence,
                                                                 tried)))[1]
        except StoreUnavailable:
            log.error("async job %s ended %s, but the store stayed unreachable: its record is lost", job_id, status)
            return False

    async def cancel(self, record: JobRecord) -> JobRecord:
        """Cancel a job not yet finished (its engine job stops now or at its next step, on
        this replica or, told through the bus, on the one running it); a finished one is
        returned unchanged."""
        if record.finished:
            return record
        job = self._engine_jobs.get(record.id)
        if job is not None:
            job.cancel()
        ended = await self.finish(record.id, "cancelled", started=job.started if job is not None else None)
        if job is None:
            await self.cancels.publish(record.id)
        return ended or record

    async def delete(self, record: JobRecord) -> None:
        """Cancel the job if it still runs, then drop its record, result and events."""
        await self.cancel(record)
        await self.store.delete(record.id)

    def abandon(self, job_id: str) -> None:
        """This replica's claim on a job of the global queue was lost (its lease expired;
        it may run elsewhere): stop the engine job and write nothing more of it."""
        if job_id in self._engine_jobs:
            self._abandoned.add(job_id)
            log.warning("lost the claim on job %s: stopping it here", job_id)
        self._stop_here(job_id)

    def _stop_here(self, job_id: str) -> None:
        """Stop this process's engine job of `job_id`, if it runs one (its record is final or
        gone, or, for a claimed job, its record refused this claim's token). A claimed job's
        follower then writes nothing: without its token a write would land on a record that
        another claim may hold."""
        if job_id in self._fences and job_id in self._engine_jobs:
            self._abandoned.add(job_id)
        job = self._forget(job_id)
        if job is not None:
            log.info("async job %s was ended elsewhere: stopping it", job_id)
            job.cancel()

    def _forget(self, job_id: str) -> Optional[Job]:
        """Drop the engine job of `job_id` (and its record) from this process's; return it."""
        self._records.pop(job_id, None)
        self._fences.pop(job_id, None)
        return self._engine_jobs.pop(job_id, None)

    async def _reconcile(self) -> None:
        """Stop the engine jobs whose record is final or gone (a cancel this process missed)."""
        for job_id in list(self._engine_jobs):
            record = await self.store.get(job_id)
            if record is None or record.finished:
                self._stop_here(job_id)

    @contextmanager
    def _unless_down(self, job_id: str) -> Iterator[None]:
        """Drop what the block writes while the store is down (the job goes on)."""
        try:
            yield
        except StoreUnavailable:
            log.warning("store unreachable: an event of async job %s is dropped", job_id)

    def announce(self, record: JobRecord) -> None:
        """Count the outcome and send the webhook of a record that just turned final (here,
        or in Redis by the reaper)."""
        if not record.listed:  # a synchronous request's (global queue): not an async job
            return
        if self.on_end is not None:
            try:
                self.on_end(record.operation, record.status)
            except Exception:  # noqa: BLE001 - metrics never break a job
                log.debug("async job metrics failed", exc_info=True)
        if record.webhook_url and self.webhooks is not None:
            self.webhooks.send(record.webhook_url, f"{EVENT_PREFIX}.{record.status}", record.to_api())

    async def close(self, grace_s: float = 2.0) -> None:
        """At shutdown: let followers finish for up to `grace_s` (the engine has stopped, so
        their jobs have ended) and webhooks as long again; cancel what is left."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.webhooks is not None:
            await self.webhooks.close(grace_s)
