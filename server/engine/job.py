"""Jobs: one submitted operation with its state, deadline, future and progress events.

A job owns its operation generator (see pipelines/unclip.py) and the scheduler entries of
the stage request it is in. Only the engine thread advances or closes the generator; other
threads may only read a job and ask for its cancellation.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, get_args

from pipelines.sampling import Track, group_key
from pipelines.unclip import Operation, StageRequest

from .scheduler import Entry

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled", "expired"]
STATES: tuple[JobState, ...] = get_args(JobState)
FINAL: frozenset[JobState] = frozenset(STATES[2:])


class QueueFull(Exception):
    """The queue of jobs waiting to start is full; retry after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: float, depth: int = 0):
        super().__init__(f"queue full ({depth} jobs waiting); retry after {retry_after_s:.1f} s")
        self.retry_after_s = float(retry_after_s)
        self.depth = depth


class EngineStopped(Exception):
    """The engine accepts no new work (draining or stopped), or stopped before the job ended."""


class ServerShutdown(EngineStopped):
    """The server shut down (drain grace over, or a second signal) before the job ended."""


class EngineCrashed(EngineStopped):
    """The engine thread died: submissions are refused and held jobs fail with this."""


class JobCancelled(Exception):
    """The job was cancelled (client went away or a cancel call)."""


class JobExpired(Exception):
    """The job's deadline passed before it finished."""


@dataclass
class Progress:
    """The job advanced in a stage request: `step` of `total` steps (the least advanced of
    its tracks) of stage `stage` ("prior", "decoder", "upsampler.0", ...). `tracks` are the
    request's own, for previews: read them only in the callback (the engine thread)."""

    job_id: str
    stage: str
    step: int
    total: int
    tracks: list[Track] = field(default_factory=list, repr=False)


_SEQ = itertools.count()


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex[:20]


class Job:
    """A submitted operation. `future` resolves to its OpResult or to the exception that
    ended it (the op's own, JobCancelled, JobExpired, EngineStopped, EngineCrashed)."""

    def __init__(self, op: Operation, kind: str, deadline_s: float,
                 on_progress: Optional[Callable[[Progress], None]], canceller: Callable[["Job"], None],
                 cost_s: Optional[float] = None, job_id: Optional[str] = None):
        self.id = job_id or new_job_id()
        self.kind, self.op = kind, op
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.state: JobState = "queued"
        self.seq = next(_SEQ)
        self.submitted = time.monotonic()
        self.started: Optional[float] = None
        self.ended: Optional[float] = None
        self.deadline = self.submitted + deadline_s
        self.on_progress = on_progress
        self.cost_s = cost_s  # estimated run time alone (None: unknown)
        self.spent_s = 0.0  # this job's share of the model calls it was in
        self.cancel_requested = False
        # A job of the global queue: its claim's lease as this replica last renewed it
        # (monotonic); past it the job may run elsewhere, so it stops here (server/claimer.py).
        self.held_until: Optional[float] = None
        self.request: Optional[StageRequest] = None
        self.entries: list[Entry] = []
        self._progress: tuple[int, int] = (0, 0)  # (request number, step) last reported
        self._requests = 0
        self._canceller = canceller

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.kind}, {self.state})"

    def cancel(self) -> None:
        """Ask to stop: a queued job ends at once, a running one at its next step boundary."""
        if self.state not in FINAL:
            self.cancel_requested = True
            self._canceller(self)

    def remaining_s(self) -> Optional[float]:
        """Estimated seconds of work left (None without an estimate)."""
        return None if self.cost_s is None else max(self.cost_s - self.spent_s, 0.0)

    def fail_now(self, error: BaseException) -> None:
        """From any thread: resolve the future with `error` at once, so that its client is
        answered now; the engine thread still closes the job when it next holds it."""
        try:
            if not self.future.done():
                self.future.set_exception(error)
        except concurrent.futures.InvalidStateError:  # resolved meanwhile
            pass

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    def lease_lost(self, now: float) -> bool:
        """Whether this replica's claim on the job may have ended by `now` (never for a job
        that is not the global queue's)."""
        return self.held_until is not None and now >= self.held_until

    def stop_reason(self, now: float) -> Optional[JobState]:
        """'cancelled' (asked, or the claim lost) or 'expired' when the job must stop now, else None."""
        if self.cancel_requested or self.future.cancelled() or self.lease_lost(now):
            return "cancelled"
        if now >= self.deadline:
            return "expired"
        return None

    # ---- engine thread only ----------------------------------------------------------

    def advance(self, tick: int) -> bool:
        """Run the op to its next stage request with unfinished tracks (True), or to its end
        (False: the job is finished, its future resolved). `tick` dates the new entries."""
        try:
            request = next(self.op) if self.request is None else self.op.send(None)
            while not any(not tr.done for tr in request.tracks):
                request = self.op.send(None)
        except StopIteration as stop:
            if self.lease_lost(time.monotonic()):  # its last step outlasted the claim: another replica's now
                self.finish("cancelled", error=JobCancelled(f"job {self.id}: its claim was lost"))
            else:
                self.finish("done", result=stop.value)
            return False
        except Exception as exc:  # noqa: BLE001 - an op's error fails its job only
            self.finish("failed", error=exc)
            return False
        self._enter(request, tick)
        return True

    def _enter(self, request: StageRequest, tick: int) -> None:
        self.request, self._requests = request, self._requests + 1
        self._progress = (self._requests, 0)
        self.entries = [Entry(self, tr, request.stage, group_key(request.stage, tr), tick, i)
                        for i, tr in enumerate(request.tracks) if not tr.done]

    def stepped(self) -> bool:
        """After a model call that included this job: drop finished tracks, report progress.
        True when the current stage request is complete."""
        self.entries = [e for e in self.entries if not e.track.done]
        self._report()
        return not self.entries

    def _report(self) -> None:
        tracks = self.request.tracks
        step, total = min(tr.index for tr in tracks), max(tr.total for tr in tracks)
        if self.on_progress is None or (self._requests, step) <= self._progress:
            return
        self._progress = (self._requests, step)
        try:
            self.on_progress(Progress(self.id, self.request.stage, step, total, tracks))
        except Exception:  # noqa: BLE001 - a listener never breaks the job
            log.warning("progress callback of %s failed", self.id, exc_info=True)

    def finish(self, state: JobState, result: Any = None, error: Optional[BaseException] = None) -> bool:
        """Move to a final state, resolve the future and close the op. False if already final."""
        if self.state in FINAL:
            return False
        self.state, self.ended, self.entries = state, time.monotonic(), []
        try:
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)
        except concurrent.futures.InvalidStateError:  # the caller cancelled the future itself
            pass
        self._close()
        return True

    def _close(self) -> None:
        try:
            self.op.close()
        except Exception:  # noqa: BLE001 - e.g. an op that swallows GeneratorExit
            log.debug("closing the op of %s failed", self.id, exc_info=True)
        self.request = None
