"""Prometheus metrics: the only module that imports prometheus_client.

`Metrics` owns its own CollectorRegistry (several apps may live in one process, as in
tests), implements the engine's `EngineStats` and takes the HTTP layer's request
observations. Names follow Prometheus conventions: prefix `unclip_`, base units (seconds,
bytes), `_total` on counters, and labels of bounded cardinality only (route templates,
HTTP status, operation kind, stage, rejection reason; never ids or prompts).

Series:
  unclip_requests_total{route,outcome}          counter   HTTP requests (outcome: status code; 499 when
                                                          the client went away before its response)
  unclip_request_duration_seconds{route}        histogram HTTP request latency
  unclip_requests_rejected_total{reason}        counter   submissions refused at once
  unclip_jobs_total{kind,outcome}               counter   jobs ended (done/failed/cancelled/expired)
  unclip_job_duration_seconds{kind}             histogram job latency, submission to end
  unclip_queue_wait_seconds{kind}               histogram submission to start
  unclip_step_duration_seconds{stage}           histogram one batched model call
  unclip_batch_size{stage}                      histogram samples (tracks) per model call
  unclip_batch_mixed_total{stage}               counter   model calls mixing operation kinds
  unclip_stage_batch_cap{stage}                 gauge     most samples per model call of a stage
  unclip_queue_depth                            gauge     jobs waiting to start in this replica's engine
  unclip_global_queue_depth                     gauge     jobs waiting in the shared queue (Redis), all
                                                          replicas; 0 without Redis
  unclip_running_jobs                           gauge     jobs admitted and running
  unclip_images_generated_total{kind}           counter   images of finished jobs
  unclip_async_jobs_total{kind,outcome}         counter   async jobs ended (completed/failed/cancelled/expired)
  unclip_webhook_deliveries_total{outcome}      counter   webhook attempts (delivered, retried, failed)
  unclip_moderation_refusals_total{stage}       counter   requests refused by moderation (prompt, prior, upload)
  unclip_model_info{model,sizes}                gauge (info) the served model
  unclip_ready                                  gauge     1 when accepting work
  unclip_store_up                               gauge     1 while the shared store answers (Redis; always 1 in
                                                          memory)
  unclip_gpu_memory_bytes                       gauge     CUDA memory allocated (0 without CUDA)
  unclip_gpu_memory_reserved_bytes              gauge     CUDA memory reserved by the caching allocator
  unclip_process_resident_memory_bytes          gauge     the server process's RSS (and the other
                                                          process_* series of prometheus_client's
                                                          ProcessCollector: CPU seconds, open fds, ...)
"""

from __future__ import annotations

from typing import Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)

from .engine.stats import REJECTIONS

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    """The server's metrics; implements server.engine.stats.EngineStats."""

    def __init__(self, model_name: str, sizes: list[int], moderation_stages: Sequence[str] = ()):
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests(self.registry)
        self._jobs(self.registry, moderation_stages)
        self._engine(self.registry)
        ProcessCollector(namespace="unclip", registry=self.registry)
        info = Info("unclip_model", "The served model", registry=self.registry)
        info.info({"model": str(model_name), "sizes": ",".join(str(s) for s in sizes)})

    def _requests(self, r: CollectorRegistry) -> None:
        self.requests = Counter("unclip_requests", "HTTP requests by route template and outcome (status code; "
                                "499: the client went away before its response)", ["route", "outcome"], registry=r)
        self.request_seconds = Histogram("unclip_request_duration_seconds", "HTTP request latency by route template",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejections = Counter("unclip_requests_rejected", "Submissions refused at once, by reason",
                                  ["reason"], registry=r)
        for reason in REJECTIONS:
            self.rejections.labels(reason)
        self.ready = Gauge("unclip_ready", "1 when the server accepts work (loaded, warmed up, not draining)",
                           registry=r)
        self.store_up = Gauge("unclip_store_up", "1 while the store of async jobs and URL images answers "
                              "(UNCLIP_REDIS_URL; always 1 in process)", registry=r)

    def _jobs(self, r: CollectorRegistry, moderation_stages: Sequence[str]) -> None:
        self.jobs = Counter("unclip_jobs", "Jobs ended, by operation kind and outcome", ["kind", "outcome"], registry=r)
        self.job_seconds = Histogram("unclip_job_duration_seconds", "Job latency from submission to end",
                                     ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("unclip_queue_wait_seconds", "Time jobs waited in the queue before starting",
                                    ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("unclip_images_generated", "Images produced by finished jobs", ["kind"], registry=r)
        self.async_jobs = Counter("unclip_async_jobs", "Async jobs (Prefer: respond-async) ended, by operation "
                                  "kind and outcome", ["kind", "outcome"], registry=r)
        self.webhooks = Counter("unclip_webhook_deliveries", "Webhook attempts by outcome: delivered, retried "
                                "(another attempt follows), failed (the last one)", ["outcome"], registry=r)
        self.refusals = Counter("unclip_moderation_refusals", "Requests refused by moderation (UNCLIP_MODERATION_"
                                "CONCEPTS), by stage: prompt, prior, upload", ["stage"], registry=r)
        for stage in moderation_stages:  # pipelines.moderation.STAGES (passed in: no torch here)
            self.refusals.labels(stage)

    def _engine(self, r: CollectorRegistry) -> None:
        self.step_seconds = Histogram("unclip_step_duration_seconds", "Duration of one batched model call by stage",
                                      ["stage"], buckets=STEP_BUCKETS, registry=r)
        self.batch_size = Histogram("unclip_batch_size", "Samples (tracks) per batched model call by stage",
                                    ["stage"], buckets=BATCH_BUCKETS, registry=r)
        self.mixed = Counter("unclip_batch_mixed", "Batched model calls that mixed operation kinds", ["stage"],
                             registry=r)
        self.batch_cap = Gauge("unclip_stage_batch_cap", "Most samples per batched model call of a stage "
                               "(measured or set by UNCLIP_STAGE_BATCH)", ["stage"], registry=r)
        self.queue_depth = Gauge("unclip_queue_depth", "Jobs waiting to start", registry=r)
        self.global_queue = Gauge("unclip_global_queue_depth", "Jobs waiting in the shared queue (Redis) of "
                                  "every replica; 0 without Redis", registry=r)
        self.running = Gauge("unclip_running_jobs", "Jobs admitted and running", registry=r)
        self.gpu_allocated = Gauge("unclip_gpu_memory_bytes", "CUDA memory allocated by tensors (0 without CUDA)",
                                   registry=r)
        self.gpu_reserved = Gauge("unclip_gpu_memory_reserved_bytes", "CUDA memory held by the caching allocator",
                                  registry=r)

    # ---- HTTP layer --------------------------------------------------------------------

    def observe_request(self, route: str, outcome: str, seconds: float) -> None:
        """One HTTP request: route template (not the raw path), outcome (status code)."""
        self.requests.labels(route, outcome).inc()
        self.request_seconds.labels(route).observe(seconds)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def set_store_up(self, up: bool) -> None:
        self.store_up.set(1 if up else 0)

    def set_global_queue(self, depth: int) -> None:
        self.global_queue.set(depth)

    def set_batch_caps(self, caps: Mapping[str, int]) -> None:
        for stage, cap in caps.items():
            self.batch_cap.labels(stage).set(cap)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def async_job_ended(self, kind: str, outcome: str) -> None:
        self.async_jobs.labels(kind, outcome).inc()

    def webhook_attempt(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()

    def moderation_refused(self, stage: str) -> None:
        """A request refused by moderation at `stage` (prompt, prior, upload)."""
        self.refusals.labels(stage).inc()

    # ---- EngineStats ---------------------------------------------------------------------

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def job_started(self, kind: str, queue_wait_s: float) -> None:
        self.queue_wait.labels(kind).observe(queue_wait_s)

    def job_finished(self, kind: str, outcome: str, seconds: float, images: int) -> None:
        self.jobs.labels(kind, outcome).inc()
        self.job_seconds.labels(kind).observe(seconds)
        if images:
            self.images.labels(kind).inc(images)

    def batch(self, stage: str, kinds: Sequence[str], seconds: float, job_ids: Sequence[str]) -> None:
        self.step_seconds.labels(stage).observe(seconds)
        self.batch_size.labels(stage).observe(len(kinds))
        if len(set(kinds)) > 1:
            self.mixed.labels(stage).inc()

    def load(self, queued: int, running: int) -> None:
        self.queue_depth.set(queued)
        self.running.set(running)

    def gpu_memory(self, allocated: int, reserved: int) -> None:
        self.gpu_allocated.set(allocated)
        self.gpu_reserved.set(reserved)
