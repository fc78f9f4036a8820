"""The global queue's worker on this replica (with Redis; server/state/redis/queue.py),
beside the API: both take specs to the engine, the API from requests, this from the queue.

While this replica is ready and its engine has a free slot (fewer jobs held than
`max_running`), it claims the next job of the global queue (woken by the `queued` channel
when any replica queues one, by `rt.claimable` when this one does or one of its own jobs
ends, and every POLL_S in any case) (a lease in Redis under a fencing token, renewed every
third of `lease_s`), rebuilds its plan from the stored spec with the kind's own builder
(server/requests/plans.py `PLANS`), submits it to the engine under the job's id, and
follows it into its record as an async job is followed (server/delivery/follow.py): its
events and result reach whichever replica asks, every write carrying the token. Draining
stops the claiming.

A claim is kept only while it is renewed: the engine job holds the lease's end as this
replica last renewed it (`Job.held_until`) and stops at its next step once that passes (a
stall, Redis out of reach); a renewal that finds the lease gone stops it too. Either way
the follower writes nothing more (`AsyncJobs.abandon`), and Redis refuses the token anyway.

Every replica also reaps: a claimed job whose lease expired (its replica died or stalled)
goes back to the front of the queue, or, after MAX_ATTEMPTS lost claims, fails with 503
`replica_lost` (inside Redis: a lost reply loses nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time

from .delivery.failures import from_exception
from .delivery.follow import Following, Fraction, follow
from .delivery.results import follow_with, prepare
from .engine.core import Job
from .errors import StoreUnavailable, error_body, unavailable
from .requests.plans import plan_of
from .requests.spec import spec_from_json
from .runtime import Runtime
from .state.records import EVENT_PREFIX
from .state.redis.queue import MAX_ATTEMPTS, Claim

log = logging.getLogger(__name__)

POLL_S = 0.5  # between two looks at the queue, at the latest (a queued job or a free slot wakes it)
REAP_S = 1.0
REPLICA_LOST = error_body(unavailable(f"The replica running the job was lost {MAX_ATTEMPTS} times; retry the "
                                      "request.", "replica_lost"))["error"]


class Claimer:
    """Claims jobs of the global queue for this replica's engine; renews their leases; reaps."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.held: dict[str, tuple[str, Job]] = {}  # job id -> its fencing token and engine job
        self._runs: dict[str, Job] = {}  # job id -> the engine job whose follower is alive here
        self._restarts: dict[str, Claim] = {}  # claimed again while an earlier run here winds down
        self._tasks: list[asyncio.Task] = []
        self._wake = rt.claimable

    def start(self) -> None:
        shared = self.rt.shared
        if shared.queue is not None and shared.link is not None:
            self._tasks = [asyncio.create_task(self._run(), name="global-queue"),
                           asyncio.create_task(shared.link.listen(shared.link.key("queued"), self._heard,
                                                                  self._subscribed), name="queued-listener")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _heard(self, job_id: str) -> None:
        self._wake.set()

    async def _subscribed(self) -> None:
        self._wake.set()  # what was queued while not subscribed

    def free(self) -> bool:
        """Whether this replica takes another job now."""
        rt, engine = self.rt, self.rt.engine
        return (rt.state == "ready" and rt.shared.up and engine is not None and engine.alive
                and engine.running + engine.queue_depth < engine.max_running)

    async def _run(self) -> None:
        loop, queue = asyncio.get_running_loop(), self.rt.shared.queue
        renewed = reaped = 0.0
        while True:
            try:
                now = loop.time()
                if now - renewed >= queue.lease_s / 3:
                    renewed = now
                    await self._renew()
                if now - reaped >= REAP_S:
                    reaped = now
                    await self._reap()
                while self.free():
                    since = time.monotonic()  # the lease starts after this, in Redis
                    if (claimed := await queue.claim()) is None:
                        break
                    await self._start(claimed, since + queue.lease_s)
            except StoreUnavailable:
                pass
            except Exception:  # noqa: BLE001 - the worker goes on whatever happened
                log.exception("global queue worker failed")
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _renew(self) -> None:
        """Renew the leases of the jobs held here; stop those whose lease was lost."""
        since = time.monotonic()
        lost = await self.rt.shared.queue.renew({job_id: token for job_id, (token, _) in self.held.items()})
        for job_id, (_, job) in list(self.held.items()):
            if job_id in lost:
                self.held.pop(job_id)
                self._restarts.pop(job_id, None)
                self.rt.jobs.abandon(job_id)
            else:
                job.held_until = since + self.rt.shared.queue.lease_s

    async def _reap(self) -> None:
        """Hand on the jobs of lost replicas; report the global queue's depth."""
        requeued, failed = await self.rt.shared.queue.reap(REPLICA_LOST)
        self.rt.metrics.set_global_queue(await self.rt.shared.queue.depth())
        if requeued:
            log.warning("jobs of a lost replica queued again: %s", requeued)
        for job_id in failed:
            log.error("job %s failed: its replica was lost %d times", job_id, MAX_ATTEMPTS)
            if (record := await self.rt.jobs.store.get(job_id)) is not None:
                self.rt.jobs.announce(record)

    async def _start(self, claim: Claim, held_until: float) -> None:
        """Run a claimed job here: rebuild its plan, submit it, follow it into its record.
        `held_until`: when its lease ends (monotonic) unless renewed."""
        rt, queue, job_id = self.rt, self.rt.shared.queue, claim.id
        log.info("claimed job %s (token %s, queued %.1f s ago)", job_id, claim.token, claim.age_s)
        if job_id in self._runs:
            self._restart_later(claim, held_until)
            return
        record = await rt.jobs.store.get(job_id)
        if record is None or record.finished:  # cancelled or deleted while queued
            await queue.done(job_id, claim.token)
            return
        try:
            spec, extra = spec_from_json(claim.spec)
            plan = plan_of(rt, spec)
            ready = prepare(rt, spec.params, spec.out, plan, admitted=True, cost_s=extra["cost_s"])
            following, progress, hook = follow_with(rt, spec.params, spec.out, plan, ready, EVENT_PREFIX,
                                                    extra["base_url"])
            left_s = rt.settings.default_deadline_s - claim.age_s  # by Redis's clock
            job = rt.engine.submit(plan.op, kind=spec.kind, on_progress=hook, cost_s=ready.cost_s,
                                   deadline_s=max(0.001, left_s), job_id=job_id)
            job.held_until = held_until
        except Exception as exc:  # noqa: BLE001 - a spec that does not run fails its job
            log.exception("claimed job %s could not start", job_id)
            await rt.jobs.finish(job_id, "failed", error=error_body(from_exception(exc))["error"], fence=claim.token)
            await queue.done(job_id, claim.token)
            return
        record.replica = rt.replica
        try:
            kept = await rt.jobs.store.put(record, claim.token)
        except StoreUnavailable:
            job.cancel()  # unfollowed it would run for nothing; the lease runs out and the reaper hands it on
            raise
        if not kept:  # ended (or claimed again) meanwhile
            job.cancel()
            await queue.done(job_id, claim.token)
            return
        self.held[job_id] = (claim.token, job)
        self._runs[job_id] = job
        rt.jobs.adopt(record, job, self._follow(job, claim.token, progress, Fraction(plan.work), following),
                      fence=claim.token)

    def _restart_later(self, claim: Claim, held_until: float) -> None:
        """This replica claimed a job again while the run of an earlier claim that lapsed
        (Redis out of reach past the lease, and the job queued again by the reaper) is still
        here: in its engine, or its follower winding down. Two runs of one job id would share
        their follower's bookkeeping (AsyncJobs), so that run stops and writes nothing
        (`abandon`), and the job starts afresh under the new claim once its follower has ended
        (`_follow`), held until the new claim's lease ends, renewed meanwhile through the old
        run's entry."""
        log.warning("claimed job %s again while its earlier run here winds down: restarting it", claim.id)
        old = self._runs[claim.id]
        self.rt.jobs.abandon(claim.id)
        old.held_until = held_until
        self.held[claim.id] = (claim.token, old)
        self._restarts[claim.id] = claim

    async def _follow(self, job: Job, token: str, progress: asyncio.Queue, fraction: Fraction,
                      following: Following) -> None:
        try:
            delivered = await follow(self.rt, job, progress, fraction, following)
            if job.state == "done":  # the chaos tests count these lines (tests/server/test_chaos.py)
                if delivered:
                    log.info("job %s of the global queue completed here", job.id)
                else:
                    log.warning("job %s ran to completion here after its claim ended: its result is dropped", job.id)
        finally:
            self.held.pop(job.id, None)
            self._wake.set()  # a slot is free
            try:
                if not job.lease_lost(job.ended or time.monotonic()):  # else the reaper hands the job on
                    await self.rt.shared.queue.done(job.id, token)  # refused if the job was claimed again
            except StoreUnavailable:
                log.warning("job %s ended, but its claim could not be dropped (it expires)", job.id)
            self._runs.pop(job.id, None)
            if (again := self._restarts.pop(job.id, None)) is not None:
                try:
                    await self._start(again, job.held_until or time.monotonic())  # renewed with the new claim
                except StoreUnavailable:  # its lease runs out unrenewed; the reaper hands the job on
                    log.warning("job %s could not start again here", job.id)
