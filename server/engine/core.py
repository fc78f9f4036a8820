"""The engine: step-level (continuous) batching of diffusion stages across jobs.

Every submitted operation becomes a `Job` (server/engine/job.py) with its own generator, tracks
and RNGs. One daemon thread runs the loop, each turn:

1. ends queued jobs that were cancelled or whose deadline passed (they never run);
2. admits queued jobs while fewer than `max_running` run, the first to finish virtually
   first (server/engine/scheduler.py), and runs each one's op code (CLIP encoding, ...) up to its
   first stage request;
3. stops running jobs that were cancelled or expired (a step boundary);
4. picks ONE batch (server/engine/scheduler.py: earliest virtual finish first, the group of the
   first track filled with its compatible tracks up to the stage's cap), runs ONE
   batched `Stage.step` and advances each of its tracks one step;
5. resumes every job whose stage request is complete to its next request or its result.

Jobs join and leave at every step. A job's output depends only on its inputs and seed:
each track draws noise from its own CPU generator and the stage computes every row with
its own timestep, sampler, guidance and eta.

Failures stay with their job: an op that raises fails its job; when a batched step raises,
every track is restored (latent, step, RNG state) and the step is retried job by job, so
only the culprit fails; on CUDA out-of-memory the batch is split in halves and retried
(a single track that still does not fit fails its job). If the loop itself dies, `alive`
turns False and every held job fails with EngineCrashed.

One thread for all of torch: the model can be loaded on the engine thread itself (pass a
loader instead of a pipeline). With PyTorch's OpenMP backend each thread that runs ops gets
its own worker pool, and on a 2-core host a pipeline run on a second thread after the model
was loaded on another ran 2.1x slower (tiny model: 0.38 s vs 0.18 s a generation); loaded
and run on the same thread it is as fast as on the main thread.

Batch caps: each stage's most tracks per call (`caps`: a mapping, or a function of the
loaded pipeline run on the engine thread after loading, e.g. server/engine/batch_caps.py's
cached profile; missing stages and the default get `max_batch`). Unless given,
`max_running` is twice the largest cap: enough jobs to fill the widest batch while others
are in another stage. `calibrate(generator)` hands the loop a measurement of better caps
(server/engine/batch_caps.py's `calibration`, one model step per unit): the loop steps it only
while it holds no job at all, one unit per idle turn, so a request waits at most for the
step in progress, and takes the caps it returns.

Costs: every batch updates the stage's moving average of seconds per track-step, so
`estimate(work)` tells what an operation takes alone before it runs (the server's
admission check), and each job accumulates its share of the calls it was in.

Admission control: at most `queue_size` jobs wait; beyond that `submit` raises QueueFull
at once with a Retry-After estimate (see `retry_after`: the work left in the running
jobs). Deadlines default to `default_deadline_s` and are capped at `max_deadline_s`.
`drain()` refuses new work while queued and running jobs finish; `abort(error)` fails
every held job at once and ends the loop after the current step; `stop()` ends the loop
and fails what is left with EngineStopped. Stats go to an `EngineStats` (server/engine/stats.py).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Generator, Iterable, Mapping, Optional, Union

import torch

from pipelines.sampling import Stage, Track
from pipelines.unclip import Operation, StagedPipeline

from . import scheduler
from .job import (
    EngineCrashed,
    EngineStopped,
    Job,
    JobCancelled,
    JobExpired,
    JobState,
    Progress,
    QueueFull,
    ServerShutdown,
)
from .scheduler import Entry
from .stats import EngineStats, NullStats

__all__ = ["Engine", "EngineCrashed", "EngineStats", "EngineStopped", "Job", "JobCancelled", "JobExpired",
           "Progress", "QueueFull", "ServerShutdown"]

log = logging.getLogger(__name__)

STOP_ERRORS = {"cancelled": JobCancelled, "expired": JobExpired}

Caps = Union[Mapping[str, int], Callable[[StagedPipeline], Mapping[str, int]], None]
Calibration = Generator[Any, None, Mapping[str, int]]  # one unit a next(); returns the caps


class Engine:
    """Runs jobs' stage requests in shared batches on one thread. Thread-safe API."""

    def __init__(self, pipe: Union[StagedPipeline, Callable[[], StagedPipeline]], *, max_batch: int = 8,
                 queue_size: int = 32, default_deadline_s: float = 600.0, max_deadline_s: float = 1800.0,
                 stats: Optional[EngineStats] = None, max_running: Optional[int] = None, caps: Caps = None):
        if max_batch < 1 or queue_size < 1 or (max_running is not None and max_running < 1):
            raise ValueError("max_batch, queue_size and max_running must be at least 1")
        if not 0 < default_deadline_s <= max_deadline_s:
            raise ValueError("need 0 < default_deadline_s <= max_deadline_s")
        self._load: Optional[Callable[[], StagedPipeline]] = None if isinstance(pipe, StagedPipeline) else pipe
        self.pipe: Optional[StagedPipeline] = pipe if isinstance(pipe, StagedPipeline) else None
        self.loaded: Future[StagedPipeline] = Future()
        self.max_batch, self.queue_size = max_batch, queue_size
        self._caps, self._fixed_running = caps, max_running
        self._calibration: Optional[Calibration] = None  # pending, stepped while idle
        self.caps: dict[str, int] = {}  # per stage, once loaded
        self.max_running = max_running or 2 * max_batch
        self.default_deadline_s, self.max_deadline_s = default_deadline_s, max_deadline_s
        self.stats: EngineStats = stats if stats is not None else NullStats()
        self._cv = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._thread: Optional[threading.Thread] = None
        self._draining = self._stopping = False
        self._crash: Optional[BaseException] = None
        self._tick = 0
        self._run_s: Optional[float] = None  # moving average of finished jobs' run time
        self._step_s: dict[str, float] = {}  # per stage: moving average of seconds per track-step
        self._gpu_at = 0.0

    # ---- public API ------------------------------------------------------------------

    def start(self) -> None:
        """Start the daemon engine thread; it first runs the loader, if one was given
        (`loaded` resolves to the pipeline, or to the loader's exception)."""
        with self._cv:
            if self._thread is not None:
                raise RuntimeError("the engine was already started")
            self._thread = threading.Thread(target=self._main, name="unclip-engine", daemon=True)
        self._thread.start()

    def submit(self, op: Operation, *, kind: str, deadline_s: Optional[float] = None,
               on_progress: Optional[Callable[[Progress], None]] = None, cost_s: Optional[float] = None,
               job_id: Optional[str] = None) -> Job:
        """Queue an operation (`cost_s`: its estimated run time alone, see `estimate`;
        `job_id`: the job's id, when it has one already: a job of the global queue).
        Raises QueueFull (queue at capacity), EngineStopped (draining or stopped) or
        EngineCrashed at once; never blocks on the engine."""
        budget = self._deadline(deadline_s)
        with self._cv:
            reason = self._refusal()
            if reason is None:
                job = Job(op, kind, budget, on_progress, self._cancel, cost_s, job_id)
                self._queue.append(job)
                self._cv.notify_all()
            depth = len(self._queue)
        if reason is not None:
            self._emit(self.stats.rejected, reason)
            raise self._refusal_error(reason, depth)
        self._report_load()
        return job

    def calibrate(self, calibration: Optional[Calibration]) -> None:
        """Step `calibration` while idle and take the caps it returns (None: nothing to do)."""
        with self._cv:
            self._calibration = calibration
            self._cv.notify_all()

    def estimate(self, work: dict[str, int]) -> Optional[float]:
        """Seconds an operation of `work` (track-steps per stage, `pipelines.operations.work`)
        takes alone, from the measured seconds per track-step of each stage; None until every
        stage it uses has run once (the warm-up runs each)."""
        used = {stage: steps for stage, steps in work.items() if steps}
        if any(stage not in self._step_s for stage in used):
            return None
        return sum(steps * self._step_s[stage] for stage, steps in used.items())

    def step_s(self, stage: str) -> float:
        """Measured seconds per track-step of a stage (0 before it has run)."""
        return self._step_s.get(stage, 0.0)

    def drain(self) -> None:
        """Refuse new work; queued and running jobs go on to finish."""
        with self._cv:
            self._draining = True
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no job is queued or running (True) or `timeout` seconds pass (False)."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._queue and not self._running, timeout)

    def abort(self, error: BaseException) -> None:
        """Stop now: every held job's future fails with `error` at once (from this thread),
        and the loop ends after the step it is in; nothing more is computed."""
        with self._cv:  # held while failing them: the loop's end (_abandon) must not fail them first
            self._stopping = self._draining = True
            for job in list(self._queue) + list(self._running):
                job.fail_now(error)
            self._cv.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop after the current step; jobs still held fail with EngineStopped."""
        with self._cv:
            self._stopping = self._draining = True
            self._cv.notify_all()
            thread = self._thread
        if thread is None:
            self._abandon(EngineStopped("the engine stopped"))
        elif thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        """The engine thread runs and has not crashed."""
        return self._thread is not None and self._thread.is_alive() and self._crash is None

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def queue_position(self, job: Job) -> Optional[int]:
        """How many queued jobs start before this one, in the order `scheduler.next_job` takes
        them now (0: it starts next); None once it left the queue."""
        with self._cv:
            if job not in self._queue:
                return None
            mine = scheduler.start_key(job)
            return sum(scheduler.start_key(j) < mine for j in self._queue)

    # ---- submission helpers ----------------------------------------------------------

    def _deadline(self, deadline_s: Optional[float]) -> float:
        seconds = self.default_deadline_s if deadline_s is None else float(deadline_s)
        if not seconds > 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        return min(seconds, self.max_deadline_s)

    def _refusal(self) -> Optional[str]:
        """Why a submission is refused now (lock held), or None."""
        if self._crash is not None or self._stopping:
            return "stopped"
        if self._draining:
            return "draining"
        if len(self._queue) >= self.queue_size:
            return "queue_full"
        return None

    def _refusal_error(self, reason: str, depth: int) -> Exception:
        if reason == "queue_full":
            return QueueFull(self.retry_after(depth), depth)
        if self._crash is not None:
            return EngineCrashed("the engine thread died")
        return EngineStopped("the server is draining or stopped and accepts no new work")

    def retry_after(self, depth: int) -> float:
        """Seconds until a queue slot is likely free, i.e. until a running job ends. The
        scheduler runs the job with the least work left first (its estimated cost less
        the step time it had), so it ends after about that much. Without estimates:
        queue position x mean run time / parallel jobs."""
        with self._cv:
            left = [job.remaining_s() for job in self._running]
        if left and all(s is not None for s in left):
            return min(300.0, max(1.0, min(left)))
        run_s = self._run_s if self._run_s is not None else 5.0
        return min(300.0, max(1.0, run_s * depth / self.max_running))

    def _cancel(self, job: Job) -> None:
        """Job.cancel(): a queued job ends now; a running one at the next step boundary."""
        with self._cv:
            queued = job.state == "queued" and job in self._queue
            if queued:
                self._queue.remove(job)
            self._cv.notify_all()
        if queued:
            self._end(job, "cancelled")

    # ---- the loop ----------------------------------------------------------------------

    def _main(self) -> None:
        torch.set_grad_enabled(False)
        error: BaseException = EngineStopped("the engine stopped")
        try:
            if self._prepare():
                while self._turn():
                    pass
        except BaseException as exc:  # noqa: BLE001 - recorded; health turns false
            self._crash = exc
            error = EngineCrashed(f"the engine thread died: {exc!r}")
            log.critical("engine thread crashed", exc_info=True)
        finally:
            self._abandon(error)

    def _prepare(self) -> bool:
        """Run the loader on this thread (see the module's notes), set the batch caps;
        resolve `loaded`. `loaded` is marked running first, so a waiter that gives up (a
        server shut down mid-load cancels its await) no longer cancels it under the loader;
        False when it was cancelled before the load began."""
        if not self.loaded.set_running_or_notify_cancel():
            return False
        try:
            if self._load is not None:
                self.pipe = self._load()
            self._set_caps(self._caps(self.pipe) if callable(self._caps) else (self._caps or {}))
        except BaseException as exc:
            self.loaded.set_exception(exc)
            raise
        self.loaded.set_result(self.pipe)
        return True

    def _set_caps(self, given: Mapping[str, int]) -> None:
        self.caps = {stage: min(max(1, int(given.get(stage, self.max_batch))), self.max_batch)
                     for stage in self.pipe.stages}
        if self._fixed_running is None:
            self.max_running = 2 * max(self.caps.values())
        self._emit(self.stats.set_batch_caps, dict(self.caps))

    def _turn(self) -> bool:
        """One turn of the loop; False once stopping."""
        if self._stopping:
            return False
        self._end_queued()
        self._admit()
        self._end_running()
        batch = scheduler.pick([e for job in self._running for e in job.entries], self.caps)
        if batch:
            self._run(batch)
        else:
            self._idle()
        return True

    def _end_queued(self) -> None:
        """Queued jobs that were cancelled or expired end without running."""
        now = time.monotonic()
        with self._cv:
            ended = [(j, j.stop_reason(now)) for j in self._queue]
            ended = [(j, r) for j, r in ended if r is not None]
            for job, _ in ended:
                self._queue.remove(job)
        for job, reason in ended:
            self._end(job, reason)

    def _admit(self) -> None:
        """Start queued jobs while there is room: run each op to its first stage request."""
        while len(self._running) < self.max_running and not self._stopping:
            with self._cv:
                if not self._queue:
                    return
                job = scheduler.next_job(self._queue)
                self._queue.remove(job)
                job.state, job.started = "running", time.monotonic()
                self._running.append(job)
            self._emit(self.stats.job_started, job.kind, job.started - job.submitted)
            self._report_load()
            self._advance(job)

    def _end_running(self) -> None:
        """Running jobs that were cancelled or expired stop here, between steps."""
        now = time.monotonic()
        for job in list(self._running):
            reason = job.stop_reason(now)
            if reason is not None:
                self._end(job, reason)

    def _idle(self) -> None:
        """Nothing to run: a unit of the pending calibration while no job is held, else sleep
        until new work, a cancel or the nearest queued deadline."""
        if self._calibration is not None and self._calibrate_a_little():
            return
        with self._cv:
            if self._stopping or (self._queue and len(self._running) < self.max_running):
                return
            wake = min((j.deadline for j in self._queue), default=time.monotonic() + 1.0)
            self._cv.wait(max(0.0, min(wake - time.monotonic(), 1.0)))

    def _calibrate_a_little(self) -> bool:
        """Run one unit of the pending calibration unless a job is held or the engine is
        draining; at its end, take its caps. A calibration that fails leaves the caps as
        they are. True when a unit ran."""
        with self._cv:
            if self._queue or self._running or self._draining or self._stopping:
                return False
        try:
            next(self._calibration)
        except StopIteration as done:
            self._calibration = None
            self._set_caps(done.value)
            log.info("batch caps now %s", self.caps)
        except Exception:  # noqa: BLE001 - serving goes on with the caps it has
            self._calibration = None
            log.warning("measuring the batch caps failed; keeping %s", self.caps, exc_info=True)
        return True

    @property
    def calibrating(self) -> bool:
        """Whether a calibration is still pending."""
        return self._calibration is not None

    def _abandon(self, error: BaseException) -> None:
        """Fail every job still held (the loop ended)."""
        with self._cv:
            jobs = list(self._queue) + list(self._running)
            self._queue.clear()
        for job in jobs:
            self._end(job, "failed", error=error)

    # ---- running a batch -------------------------------------------------------------

    def _run(self, batch: list[Entry]) -> None:
        """One batched model call; then advance, finish or fail each job in it."""
        name = batch[0].stage
        started = time.perf_counter()
        failures = self._step(self.pipe.stages[name], batch)
        seconds = time.perf_counter() - started
        self._tick += 1
        share = seconds / len(batch)
        self._step_s[name] = share if name not in self._step_s else 0.8 * self._step_s[name] + 0.2 * share
        for entry in batch:
            entry.tick = self._tick
            entry.job.spent_s += share
        self._emit(self.stats.batch, name, [e.job.kind for e in batch], seconds, [e.job.id for e in batch])
        for job in _unique(e.job for e in batch):
            if job in failures:
                self._end(job, "failed", error=failures[job])
            elif job.stepped():
                self._advance(job)
        self._gpu_memory()

    def _step(self, stage: Stage, batch: list[Entry]) -> dict[Job, BaseException]:
        """Step the batch's tracks; on failure retry so that only the culprit jobs fail.
        Returns the failed jobs and their errors."""
        saved = _snapshot([e.track for e in batch])
        try:
            stage.step([e.track for e in batch])
            return {}
        except torch.cuda.OutOfMemoryError as exc:
            _restore(saved)
            _free_cuda()
            if len(batch) == 1:
                return {batch[0].job: exc}
            log.warning("out of memory in a %s batch of %d: splitting", stage.key, len(batch))
            half = len(batch) // 2
            return {**self._step(stage, batch[:half]), **self._step(stage, batch[half:])}
        except Exception as exc:  # noqa: BLE001 - isolated below
            _restore(saved)
            jobs = _unique(e.job for e in batch)
            if len(jobs) == 1:
                log.warning("a %s step failed for job %s", stage.key, jobs[0].id, exc_info=True)
                return {jobs[0]: exc}
            failures: dict[Job, BaseException] = {}
            for job in jobs:
                failures.update(self._step(stage, [e for e in batch if e.job is job]))
            return failures

    def _advance(self, job: Job) -> None:
        """Resume the job's op to its next stage request, or end it."""
        if job.advance(self._tick) and job.request.stage not in self.pipe.stages:
            job.finish("failed", error=ValueError(f"unknown stage {job.request.stage!r}"))
        if job.finished:
            self._retire(job)

    # ---- ending jobs -------------------------------------------------------------------

    def _end(self, job: Job, outcome: JobState, error: Optional[BaseException] = None) -> None:
        """End a job that did not complete: cancelled, expired or failed."""
        if error is None:
            error = STOP_ERRORS[outcome](f"job {job.id} {outcome}")
        if job.finish(outcome, error=error):
            self._retire(job)

    def _retire(self, job: Job) -> None:
        """Bookkeeping once a job is final: out of the running set, stats, waiters woken."""
        with self._cv:
            if job in self._running:
                self._running.remove(job)
            self._cv.notify_all()
        seconds = (job.ended or time.monotonic()) - job.submitted
        images = _image_count(job)
        if job.state == "done" and job.started is not None:
            run_s = job.ended - job.started
            self._run_s = run_s if self._run_s is None else 0.8 * self._run_s + 0.2 * run_s
        self._emit(self.stats.job_finished, job.kind, job.state, seconds, images)
        self._report_load()

    # ---- stats ---------------------------------------------------------------------------

    @staticmethod
    def _emit(report: Callable[..., None], *args: Any) -> None:
        """Call one of the stats' methods; an exception from it is logged, never raised."""
        try:
            report(*args)
        except Exception:  # noqa: BLE001 - stats never break the engine
            log.warning("stats.%s failed", getattr(report, "__name__", report), exc_info=True)

    def _report_load(self) -> None:
        self._emit(self.stats.load, len(self._queue), len(self._running))

    def _gpu_memory(self) -> None:
        """CUDA memory, at most once a second."""
        device = self.pipe.device
        now = time.monotonic()
        if torch.device(device).type != "cuda" or now - self._gpu_at < 1.0:
            return
        self._gpu_at = now
        self._emit(self.stats.gpu_memory, torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device))


def _unique(jobs: Iterable[Job]) -> list[Job]:
    return list(dict.fromkeys(jobs))


def _image_count(job: Job) -> int:
    """Images a finished job produced (0 unless it is done)."""
    if job.state != "done" or job.future.cancelled():
        return 0
    images = getattr(job.future.result(), "images", None)
    return int(images.shape[0]) if images is not None else 0


def _snapshot(tracks: list[Track]) -> tuple[list, list]:
    """What a step changes: each track's latent, position and anchor, and its RNG state."""
    gens = {id(tr.generator): tr.generator for tr in tracks if tr.generator is not None}
    states = [(tr, tr.x, tr.index, tr.repeat, tr.anchor) for tr in tracks]
    return states, [(g, g.get_state()) for g in gens.values()]


def _restore(saved: tuple[list, list]) -> None:
    states, gens = saved
    for tr, x, index, repeat, anchor in states:
        tr.x, tr.index, tr.repeat, tr.anchor = x, index, repeat, anchor
    for gen, state in gens:
        gen.set_state(state)


def _free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
