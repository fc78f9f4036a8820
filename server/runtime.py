"""The runtime: everything a request needs besides itself (settings, model, engine,
metrics, URL store, async jobs, lifecycle state), one per app, and how routes reach it.
The URL store and the async jobs' store are this process's, or shared by every replica
through Redis (server/state/shared.py, built by `shared_state` below).

Lifecycle: `start()` loads the model on the engine thread (the port answers at once:
/health 200 "loading", /ready 503) and sets each stage's batch cap (from the cached
profile, else max_batch), then one tiny generation warms it up and the state turns
"ready"; caps not cached are then measured by the engine while it is idle.
`begin_drain()` (SIGTERM, see serving.py) turns it "draining": /ready 503, new work refused
with 503, the engine finishes what it holds. With Redis, the runtime is ready only while
Redis answers too: /ready 503 and new work 503 `store_unavailable` while it does not
(liveness stays 200), ready again by itself once it is back.

Routes take the runtime as a FastAPI dependency: `AppRuntime` (any state) or
`ReadyRuntime` (503 unless new work is accepted).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Annotated, Callable, Literal, Optional

from fastapi import Depends, Request

from pipelines.model_dir import describe
from pipelines.moderation import STAGES as MODERATION_STAGES
from pipelines.operations import generate
from pipelines.sizes import size_name
from pipelines.unclip import Sampling, StagedPipeline

from .engine.batch_caps import Calibration, calibration, caps_for, check_overrides
from .engine.core import Engine, ServerShutdown
from .errors import StoreUnavailable, unavailable
from .jobs.async_jobs import AsyncJobs
from .jobs.webhooks import WebhookSender
from .metrics import Metrics
from .settings import Settings
from .state.cancels import LocalCancels
from .state.records import MemoryJobStore
from .state.redis.cancels import RedisCancels
from .state.redis.idempotency import RedisIdempotency
from .state.redis.link import RedisLink
from .state.redis.queue import RedisQueue
from .state.redis.store import RedisJobStore
from .state.redis.urls import RedisUrlStore
from .state.shared import SharedState
from .state.url_store import UrlStore
from .trust.credentials import load_credentials
from .trust.moderation import Moderation
from .trust.watermark import Watermark
from .world import load_about

log = logging.getLogger(__name__)

RuntimeState = Literal["loading", "ready", "draining", "failed"]


class Runtime:
    """Everything a request needs besides itself; one per app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model = describe(settings.model_dir)  # its layout, name, sizes, stages; ModelDirError
        self.model_name, self.size_rule = self.model.name, self.model.size_rule
        # Uploads are reduced to this side at once: the largest size any stage reads them at.
        self.input_side = self.model.input_side
        check_overrides(settings.stage_caps, self.model.stages, settings.max_batch)  # BadCaps before anything starts
        self.about = load_about(settings.model_dir, self.size_rule)  # what it draws (world.json); BadWorld
        self.metrics = Metrics(self.model_name, [size_name(s) for s in self.size_rule.listed], MODERATION_STAGES)
        # C2PA signing, the watermark and moderation (docs/trust.md): BadCredentials, BadConcepts
        # before anything starts.
        self.credentials = load_credentials(settings.c2pa_cert, settings.c2pa_key, settings.c2pa_tsa_url)
        self.watermark = Watermark(settings.watermark_key) if settings.watermark else None
        self.moderation = Moderation(settings.moderation_concepts, self.metrics.moderation_refused)
        self.replica = f"{socket.gethostname()}-{os.getpid()}"  # its name in the records of the jobs it runs
        self.shared = shared_state(settings, self.metrics.set_store_up)
        self.metrics.set_store_up(self.shared.up)
        self.store = self.shared.images  # the URL images
        self.jobs = async_jobs(settings, self.metrics, self.shared)
        self.pipe: Optional[StagedPipeline] = None
        self.engine: Optional[Engine] = None
        self.state: RuntimeState = "loading"  # loading -> ready -> draining; or failed
        self.waiting = 0  # synchronous requests here waiting for a job of the global queue
        # Set when this replica may claim a job of the global queue: it queued one, or a slot
        # freed (server/claimer.py waits for it).
        self.claimable = asyncio.Event()
        self.created = time.time()

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.engine is not None and self.engine.alive and self.shared.up

    @property
    def alive(self) -> bool:
        """Liveness: loading, or the engine thread is running."""
        return self.state == "loading" or (self.engine is not None and self.engine.alive)

    def require_ready(self) -> None:
        """Raise 503 unless new work is accepted."""
        if self.state == "draining":
            raise unavailable("The server is shutting down and accepts no new work.", "draining")
        if self.state == "ready" and not self.shared.up:
            raise StoreUnavailable()
        if not self.ready:
            raise unavailable("The model is not ready yet.", "not_ready")

    async def start(self) -> None:
        """Connect the shared stores, load the model, start the engine, warm up; then ready."""
        s = self.settings
        await self.shared.start()
        self.jobs.start()
        self.engine = Engine(lambda: self.model.load(s.torch_device(), s.torch_dtype(), s.channels_last),
                             max_batch=s.max_batch, queue_size=s.queue_size,
                             default_deadline_s=s.default_deadline_s, max_deadline_s=s.max_deadline_s,
                             stats=self.metrics, caps=self.batch_caps)
        self.engine.start()
        self.pipe = await asyncio.wrap_future(self.engine.loaded)
        if self.moderation.enabled:  # the concepts through the model's CLIP, on the engine thread
            await asyncio.wrap_future(self.engine.submit(self.moderation.encoding(self.pipe), kind="moderation").future)
        if s.warmup:
            await self.warm_up()
        if self.state == "loading":
            self.state = "ready"
            self.metrics.set_ready(True)
            log.info("ready: model %s (%s). %s", self.model_name, self.model.family, self.size_rule.describe())
            self.engine.calibrate(self.calibration(self.pipe))

    def batch_caps(self, pipe: StagedPipeline) -> dict[str, int]:
        """Each stage's batch cap (server/engine/batch_caps.py); runs on the engine thread."""
        s = self.settings
        return caps_for(pipe, s.max_batch, s.stage_caps, s.batch_profile == "measure", s.batch_profile_dir)

    def calibration(self, pipe: StagedPipeline) -> Optional[Calibration]:
        """The measurement of the caps the cache lacks, run by the engine while idle."""
        s = self.settings
        if s.batch_profile != "measure":
            return None
        return calibration(pipe, s.max_batch, s.stage_caps, s.batch_profile_dir)

    async def warm_up(self) -> None:
        """One generation at the largest listed size with one step per stage."""
        opts = Sampling(prior_steps=1, decoder_steps=1, upsampler_steps=1, best_of=1)
        largest = max(self.size_rule.listed, key=lambda s: s[0] * s[1])
        op = generate(self.pipe, "warm-up", n=1, seed=0, size=largest, opts=opts)
        job = self.engine.submit(op, kind="warmup", deadline_s=self.settings.max_deadline_s)
        await asyncio.wrap_future(job.future)

    def begin_drain(self) -> None:
        """Not ready, no new work; the engine finishes its jobs. Safe from any thread."""
        if self.state != "failed":
            self.state = "draining"
        self.metrics.set_ready(False)
        if self.engine is not None:
            self.engine.drain()

    def abort(self) -> None:
        """The drain is over: every held job answers 503 `shutdown` now, and the engine
        stops after its current step. Safe from any thread."""
        if self.engine is not None:
            self.engine.abort(ServerShutdown("the server shut down before the job finished"))

    def wait_idle(self, timeout: float) -> bool:
        """Block until the engine holds no job and no synchronous request here waits for a
        job of the global queue (True), or timeout passes (False)."""
        deadline = time.monotonic() + timeout
        if self.engine is not None and not self.engine.wait_idle(timeout):
            return False
        while self.waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.waiting

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop(timeout=5.0)

    async def close(self, grace_s: float) -> None:
        """After `stop`: let async jobs end (up to `grace_s`, see AsyncJobs.close), then
        close the shared stores."""
        await self.jobs.close(grace_s=grace_s)
        await self.shared.close()


def shared_state(s: Settings, on_change: Callable[[bool], None] = lambda up: None) -> SharedState:
    """The stores the settings ask for; `on_change(up)` hears Redis come and go."""
    if s.redis_url is None:
        return SharedState(MemoryJobStore(s.job_ttl_s, s.max_jobs_kept, s.job_store_max_bytes),
                           UrlStore(s.url_ttl_s, s.url_store_max_bytes), LocalCancels())
    link = RedisLink(s.redis_url, on_change, s.redis_replicas)
    # A record not yet finished lasts past its job's longest life, in case its replica dies.
    pending_s = s.max_deadline_s + s.job_ttl_s
    jobs = RedisJobStore(link, s.job_ttl_s, s.max_jobs_kept, pending_ttl_s=pending_s)
    queue = RedisQueue(link, s.queue_size, s.lease_s, pending_s, s.job_ttl_s)
    return SharedState(jobs, RedisUrlStore(link, s.url_ttl_s, s.url_store_max_bytes), RedisCancels(link), link, queue,
                       RedisIdempotency(link, pending_s))


def async_jobs(s: Settings, metrics: Metrics, shared: SharedState) -> AsyncJobs:
    """The async jobs over the shared stores, with a webhook sender when hosts are allowed."""
    webhooks = WebhookSender(s.webhook_secret, s.webhook_host_set, s.webhook_attempts, s.webhook_backoff_s,
                             metrics.webhook_attempt) if s.webhook_host_set else None
    return AsyncJobs(shared.jobs, s.job_ttl_s, webhooks, metrics.async_job_ended, shared.cancels, shared.queue)


def app_runtime(request: Request) -> Runtime:
    """The app's runtime, whatever its state."""
    return request.app.state.runtime


def ready_runtime(request: Request) -> Runtime:
    """The app's runtime, refusing work (503) while not ready or draining."""
    rt = app_runtime(request)
    rt.require_ready()
    return rt


AppRuntime = Annotated[Runtime, Depends(app_runtime)]
ReadyRuntime = Annotated[Runtime, Depends(ready_runtime)]
