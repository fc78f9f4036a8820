"""The scheduling policy (server/engine/scheduler.py) as a pure function, and the engine following
it: small work passes big work, started work finishes first, batches are capped per stage,
and aging bounds how long a job can be overtaken."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Optional

import pytest

from pipelines import operations as ops
from pipelines.unclip import Sampling, UnCLIP
from server.engine import scheduler
from server.engine.core import Engine
from server.engine.scheduler import Entry

from .test_engine import Recorder

_SEQ = itertools.count()


@dataclass(eq=False)
class FakeJob:
    """A job as the policy sees it: arrival, estimated cost, share of calls so far."""

    submitted: float
    cost_s: Optional[float]
    spent_s: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        self.seq = next(_SEQ)

    def remaining_s(self) -> Optional[float]:
        return None if self.cost_s is None else max(self.cost_s - self.spent_s, 0.0)


def entries(job: FakeJob, stage: str, n: int = 1, tick: int = 0) -> list[Entry]:
    return [Entry(job, None, stage, (stage,), tick, i) for i in range(n)]


CAPS = {"prior": 4, "decoder": 4, "upsampler.0": 1}


def test_small_work_passes_big_work() -> None:
    big = FakeJob(submitted=0.0, cost_s=15.0, spent_s=0.5)
    small = FakeJob(submitted=0.5, cost_s=0.3)
    batch = scheduler.pick(entries(big, "upsampler.0", 10) + entries(small, "prior"), CAPS)
    assert [e.job for e in batch] == [small]


def test_started_work_stays_ahead_and_compatible_tracks_ride_along() -> None:
    started, fresh = FakeJob(0.0, 1.0, spent_s=0.2), FakeJob(0.0, 1.0)
    mine, theirs = entries(started, "prior", 2), entries(fresh, "prior", 3)
    assert scheduler.pick(theirs + mine, CAPS) == mine + theirs[:2]  # first the started job's, up to the cap


def test_each_stage_has_its_own_cap_and_tracks_of_a_job_take_turns() -> None:
    job = FakeJob(0.0, 5.0)
    ups = [Entry(job, None, "upsampler.0", ("upsampler.0",), tick, i) for i, tick in enumerate((3, 1, 2))]
    assert scheduler.pick(ups, CAPS) == [ups[1]]  # one per call, the least recently run
    assert len(scheduler.pick(entries(job, "prior", 9), CAPS)) == 4
    assert scheduler.pick([], CAPS) == []


def test_next_job_is_the_first_to_finish_virtually_and_unknown_costs_go_in_order() -> None:
    long, short = FakeJob(0.0, 20.0), FakeJob(1.0, 0.5)
    assert scheduler.next_job([long, short]) is short
    a, b = FakeJob(0.0, None), FakeJob(0.0, None)
    assert scheduler.next_job([b, a]) is a  # no estimates: first come first served
    assert scheduler.next_job([]) is None


class OneEach(dict):
    """Caps of 1 for any stage."""

    def __missing__(self, key: str) -> int:
        return 1


def simulate(horizon_s: float, step_s: float = 0.1) -> dict[str, float]:
    """One device, a call takes step_s. A 1 s job arrives at 0; from then on a 1-step job
    arrives every step, enough to keep the device busy on its own (100% load). Returns
    finish times by job name."""
    big = FakeJob(0.0, 10 * step_s, name="big")
    pending = {big: 10}
    done: dict[str, float] = {}
    now, k = 0.0, 0
    while now < horizon_s and "big" not in done:
        small = FakeJob(now, step_s, name=f"small{k}")
        pending[small], k = 1, k + 1
        batch = scheduler.pick([e for job in pending for e in entries(job, f"own{job.seq}")], OneEach())
        job = batch[0].job
        now += step_s
        job.spent_s += step_s
        pending[job] -= 1
        if not pending[job]:
            del pending[job]
            done[job.name] = now
    return done


def test_aging_bounds_how_long_a_job_is_overtaken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The docstring's bound: a job of cost C is overtaken only by jobs that arrive less
    than C / AGING after it. Here C = 1 s; the 10 small jobs of its first second and itself
    take 2 s, so it ends by then although small jobs keep coming. Without aging (shortest
    remaining work only) it never ends."""
    assert simulate(horizon_s=30.0)["big"] <= 2.0 + 0.1 + 1e-9
    monkeypatch.setattr(scheduler, "AGING", 1e-9)
    assert "big" not in simulate(horizon_s=30.0)


# ---- the engine follows the policy ------------------------------------------------------

ONE = Sampling(prior_steps=1, decoder_steps=1, upsampler_steps=1, best_of=1)
LONG = Sampling(prior_steps=12, decoder_steps=6, upsampler_steps=4, best_of=1)


def started_engine(pipe: UnCLIP, **kw) -> tuple[Engine, Recorder]:
    stats = Recorder()
    engine = Engine(pipe, stats=stats, **kw)
    engine.start()
    engine.loaded.result(timeout=60)
    return engine, stats


def test_engine_caps_each_stage_and_sizes_running_from_the_caps(tiny_pipe: UnCLIP) -> None:
    threads = []

    def caps(pipe: UnCLIP) -> dict[str, int]:
        threads.append(threading.current_thread().name)
        return {"upsampler.0": 1, "decoder": 2}

    engine, stats = started_engine(tiny_pipe, max_batch=4, caps=caps)
    try:
        assert engine.caps == {"prior": 4, "decoder": 2, "upsampler.0": 1} and engine.max_running == 8
        assert threads == ["unclip-engine"]
        jobs = [engine.submit(ops.generate(tiny_pipe, "x", n=3, seed=i, opts=ONE), kind="generation")
                for i in range(2)]
        for job in jobs:
            job.future.result(timeout=120)
        most = {stage: max(len(ids) for s, _, ids in stats.batches if s == stage) for stage in engine.caps}
        assert most == {"prior": 4, "decoder": 2, "upsampler.0": 1}
    finally:
        engine.stop(timeout=30)


def test_engine_runs_a_small_job_sent_behind_a_big_one_at_once(tiny_pipe: UnCLIP) -> None:
    """Issue 16's case: a 32 px generation sent while a four-image 64 px one runs. With
    turns shared per track it waited for the big one's tracks at every step."""
    engine, stats = started_engine(tiny_pipe, max_batch=4, caps={stage: 1 for stage in tiny_pipe.stages})
    try:
        big = engine.submit(ops.generate(tiny_pipe, "big", n=4, seed=1, opts=LONG), kind="generation", cost_s=10.0)
        while stats.steps_of(big) < 3:
            time.sleep(0.002)
        small = engine.submit(ops.generate(tiny_pipe, "small", seed=2, size=32, opts=ONE), kind="generation",
                              cost_s=0.05)
        small.future.result(timeout=120)
        calls_before_small = len(stats.batches)
        assert not big.future.done()
        big.future.result(timeout=120)
        small_calls = [i for i, (_, _, ids) in enumerate(stats.batches) if small.id in ids]
        first_small = small_calls[0]
        # its two stages ran back to back, at most one big call in flight before them
        assert small_calls == [first_small, first_small + 1], small_calls
        assert sum(big.id in ids for _, _, ids in stats.batches[:calls_before_small]) < 3 + 2 + 1
    finally:
        engine.stop(timeout=30)


def test_engine_finishes_a_burst_one_job_after_another(tiny_pipe: UnCLIP) -> None:
    """Six equal jobs sent at once end in turn, not all at the end (processor sharing)."""
    engine, stats = started_engine(tiny_pipe, max_batch=4, caps={stage: 1 for stage in tiny_pipe.stages},
                                   max_running=6)
    try:
        jobs = [engine.submit(ops.generate(tiny_pipe, "x", seed=i, opts=LONG), kind="generation", cost_s=1.0)
                for i in range(6)]
        for job in jobs:
            job.future.result(timeout=120)
        last_call = [max(i for i, (_, _, ids) in enumerate(stats.batches) if job.id in ids) for job in jobs]
        total = len(stats.batches)
        assert last_call == sorted(last_call)
        assert sum(last_call) / len(last_call) / last_call[-1] <= 0.65, (last_call, total)
    finally:
        engine.stop(timeout=30)
