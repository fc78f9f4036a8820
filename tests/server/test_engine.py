"""The engine: step-level batching across jobs, with the tiny random-weight pipeline and
few steps. Each test starts its own engine and stops it at the end."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
import torch

from pipelines import operations as ops
from pipelines.checkpoints import load_model_dir
from pipelines.errors import InvalidInput
from pipelines.unclip import Operation, Sampling, UnCLIP, run_direct
from server.engine.core import Engine, EngineCrashed, EngineStopped, Job, JobCancelled, JobExpired, Progress, QueueFull

FAST = Sampling(prior_steps=3, decoder_steps=3, upsampler_steps=2, best_of=2)
ONE = Sampling(prior_steps=1, decoder_steps=1, upsampler_steps=1, best_of=1)
LONG = Sampling(prior_steps=20, decoder_steps=8, upsampler_steps=4, best_of=1)


class Recorder:
    """EngineStats that keeps everything it is told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[tuple[str, list[str], list[str]]] = []
        self.finished: list[tuple[str, str, int]] = []
        self.started: list[str] = []
        self.rejections: list[str] = []
        self.loads: list[tuple[int, int]] = []

    def rejected(self, reason):
        self.rejections.append(reason)

    def job_started(self, kind, queue_wait_s):
        self.started.append(kind)

    def job_finished(self, kind, outcome, seconds, images):
        self.finished.append((kind, outcome, images))

    def batch(self, stage, kinds, seconds, job_ids):
        with self.lock:
            self.batches.append((stage, list(kinds), list(job_ids)))

    def load(self, queued, running):
        self.loads.append((queued, running))

    def gpu_memory(self, allocated, reserved):
        pass

    def set_batch_caps(self, caps):
        self.caps = dict(caps)

    def steps_of(self, job: Job) -> int:
        """Model calls that included the job."""
        with self.lock:
            return sum(job.id in ids for _, _, ids in self.batches)


@pytest.fixture
def make_engine(tiny_pipe: UnCLIP) -> Iterator[Callable[..., tuple[Engine, Recorder]]]:
    engines: list[Engine] = []

    def make(start: bool = True, pipe: Optional[UnCLIP] = None, **kw) -> tuple[Engine, Recorder]:
        stats = Recorder()
        engine = Engine(pipe or tiny_pipe, stats=stats, **kw)
        engines.append(engine)
        if start:
            engine.start()
        return engine, stats

    yield make
    for engine in engines:
        engine.stop(timeout=30)


@pytest.fixture
def slow_steps(tiny_pipe: UnCLIP, monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Make every stage step take at least `seconds` (to catch jobs mid-run)."""

    def slow(seconds: float) -> None:
        for stage in tiny_pipe.stages.values():
            original = stage.step

            def step(tracks, original=original):
                time.sleep(seconds)
                return original(tracks)

            monkeypatch.setattr(stage, "step", step)

    return slow


def image(seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, size, size), generator=g) * 2 - 1


def left_half_keep(size: int = 32) -> torch.Tensor:
    keep = torch.zeros((1, 1, size, size))
    keep[..., size // 2:] = 1
    return keep


def mixed_ops(pipe: UnCLIP) -> dict[str, Callable[[], Operation]]:
    """Nine requests of four kinds; the target is a generation."""
    return {
        "target": lambda: ops.generate(pipe, "a red circle", seed=7, opts=FAST),
        "gen1": lambda: ops.generate(pipe, "a blue square", seed=1, opts=FAST),
        "gen2": lambda: ops.generate(pipe, "two green stars", n=2, seed=2, opts=FAST),
        "var1": lambda: ops.variations(pipe, image(1), seed=3, eta=0.5, opts=FAST),
        "var2": lambda: ops.variations(pipe, image(2), n=2, seed=4, eta=0.8, opts=FAST),
        "inp1": lambda: ops.inpaint(pipe, image(3), left_half_keep(), "a yellow moon", seed=5, opts=FAST),
        "inp2": lambda: ops.inpaint(pipe, image(4), left_half_keep(), "a purple cube", seed=6, opts=FAST),
        "int1": lambda: ops.interpolate(pipe, images=[image(5), image(6)], thetas=(0.0, 0.5, 1.0), seed=8, opts=FAST),
        "int2": lambda: ops.interpolate(pipe, prompts=["a cat", "a dog"], thetas=(0.25, 0.75), seed=9, opts=FAST),
    }


def kind_of(name: str) -> str:
    return {"target": "generation", "gen": "generation", "var": "variation", "inp": "inpainting",
            "int": "interpolation"}[name if name == "target" else name[:3]]


def pixel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of images in [-1, 1], in units of the [0, 1] pixel range."""
    return float(((a - b).abs() / 2).mean())


def result(job: Job, timeout: float = 120.0):
    return job.future.result(timeout)


# ---- batching ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_invariance_with_mixed_kinds(make_engine, tiny_pipe: UnCLIP, tiny_model_dir: Path,
                                           dtype: torch.dtype) -> None:
    """Each of nine requests (generations, variations, inpaintings, interpolations) alone
    vs. all nine at once: every output image differs by at most 1/255 on average (pixel
    scale [0, 1]), and the shared run really batched different kinds together; in fp32 and
    in bf16 (the default on CPUs with native bf16, channels-last as served)."""
    pipe = tiny_pipe if dtype == torch.float32 else UnCLIP(
        load_model_dir(tiny_model_dir, dtype=dtype).use_channels_last())
    requests = mixed_ops(pipe)
    engine, _ = make_engine(pipe=pipe)
    alone = {name: result(engine.submit(make(), kind=kind_of(name))).images for name, make in requests.items()}

    engine, stats = make_engine(pipe=pipe)
    jobs = {name: engine.submit(make(), kind=kind_of(name)) for name, make in requests.items()}
    together = {name: result(job).images for name, job in jobs.items()}

    diffs = {name: pixel_diff(alone[name], together[name]) for name in requests}
    print("mean |alone - together| per request (1/255 units):", {k: round(v * 255, 6) for k, v in diffs.items()})
    assert max(diffs.values()) <= 1 / 255, diffs
    mixed = [(stage, kinds) for stage, kinds, _ in stats.batches if len(kinds) > 1 and len(set(kinds)) > 1]
    sizes = Counter(len(kinds) for _, kinds, _ in stats.batches)
    print("batch sizes:", dict(sorted(sizes.items())), "mixed batches:", len(mixed), "of", len(stats.batches))
    assert mixed, "no batch mixed operation kinds"
    assert {k for _, kinds in mixed for k in kinds} == {"generation", "variation", "inpainting", "interpolation"}
    assert any(stage == "decoder" and len(set(kinds)) >= 3 for stage, kinds in mixed)
    assert max(len(kinds) for _, kinds, _ in stats.batches) <= engine.max_batch


def test_engine_equals_run_direct(make_engine, tiny_pipe: UnCLIP) -> None:
    """A generation and an inpainting through the engine (alone) equal the direct driver."""
    makers = {
        "generation": lambda: ops.generate(tiny_pipe, "a red circle", n=2, seed=11, opts=FAST),
        "inpainting": lambda: ops.inpaint(tiny_pipe, image(9), left_half_keep(), "a moon", seed=12, opts=FAST),
    }
    engine, _ = make_engine()
    for kind, make in makers.items():
        direct = run_direct(tiny_pipe, make())
        served = result(engine.submit(make(), kind=kind))
        diff = float((direct.images - served.images).abs().max())
        print(f"{kind}: max |engine - run_direct| = {diff:.3g}")
        assert diff <= 1e-5
        assert torch.allclose(direct.embeddings, served.embeddings, atol=1e-6)


def test_batches_respect_max_batch_and_join_midway(make_engine, tiny_pipe: UnCLIP, slow_steps) -> None:
    """A job submitted while another runs joins its batches at a step boundary."""
    slow_steps(0.01)
    engine, stats = make_engine(max_batch=3)
    first = engine.submit(ops.generate(tiny_pipe, "a", seed=1, opts=LONG), kind="generation")
    while stats.steps_of(first) < 2:
        time.sleep(0.005)
    second = engine.submit(ops.generate(tiny_pipe, "b", seed=2, opts=LONG), kind="generation")
    result(first), result(second)
    shared = [ids for _, _, ids in stats.batches if first.id in ids and second.id in ids]
    assert shared, "the late job never shared a batch"
    assert max(len(ids) for _, _, ids in stats.batches) <= 3


def test_a_calibration_runs_only_while_no_job_is_held_then_sets_the_caps(make_engine, tiny_pipe: UnCLIP) -> None:
    """The engine steps a pending calibration one unit per idle turn: never while a job is
    queued or running, a job submitted meanwhile is served, and its caps apply at its end."""
    seen: list[tuple[int, int]] = []
    engine: Optional[Engine] = None

    def calibration(pipe: UnCLIP):
        for _ in range(6):
            seen.append((engine.queue_depth, engine.running))  # as each unit begins
            time.sleep(0.05)
            yield "a unit"
        return {"prior": 1, "decoder": 2}

    engine, stats = make_engine(max_batch=4, caps={"prior": 4})
    engine.loaded.result(timeout=30)
    assert not engine.calibrating
    engine.calibrate(calibration(tiny_pipe))
    assert engine.caps == {"prior": 4, "decoder": 4, "upsampler.0": 4} and engine.calibrating
    served = result(engine.submit(ops.generate(tiny_pipe, "a red circle", seed=1, opts=FAST), kind="generation"))
    assert served.images.shape[0] == 1
    deadline = time.monotonic() + 30
    while engine.calibrating and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(seen) == 6 and set(seen) == {(0, 0)}
    assert engine.caps == {"prior": 1, "decoder": 2, "upsampler.0": 4} == stats.caps
    assert engine.max_running == 8  # twice the largest cap


def test_a_failing_calibration_keeps_the_caps(make_engine, tiny_pipe: UnCLIP) -> None:
    def calibration(pipe: UnCLIP):
        yield "a unit"
        raise RuntimeError("out of memory while measuring")

    engine, _ = make_engine(max_batch=2)
    engine.calibrate(calibration(tiny_pipe))
    deadline = time.monotonic() + 30
    while engine.calibrating and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.alive and not engine.calibrating and engine.caps == dict.fromkeys(tiny_pipe.stages, 2)
    assert result(engine.submit(ops.generate(tiny_pipe, "a", seed=1, opts=FAST), kind="generation")) is not None


# ---- admission, deadlines, cancellation ------------------------------------------------

def test_queue_full_rejects_at_once_and_keeps_queued(make_engine, tiny_pipe: UnCLIP) -> None:
    engine, stats = make_engine(start=False, queue_size=3)
    jobs = [engine.submit(ops.generate(tiny_pipe, "x", seed=i, opts=ONE), kind="generation") for i in range(3)]
    started = time.monotonic()
    with pytest.raises(QueueFull) as info:
        engine.submit(ops.generate(tiny_pipe, "x", seed=9, opts=ONE), kind="generation")
    assert time.monotonic() - started < 0.5  # at once: a submit that waited for room would hang
    assert info.value.retry_after_s >= 1.0
    assert stats.rejections == ["queue_full"] and engine.queue_depth == 3
    engine.start()
    assert [result(j).images.shape[0] for j in jobs] == [1, 1, 1]
    assert [j.state for j in jobs] == ["done"] * 3
    assert result(engine.submit(ops.generate(tiny_pipe, "x", seed=9, opts=ONE), kind="generation")) is not None


def started_flag(op: Operation) -> tuple[Operation, threading.Event]:
    """Wrap an op; the event is set when its code first runs."""
    flag = threading.Event()

    def wrapped():
        flag.set()
        return (yield from op)

    return wrapped(), flag


def test_deadline_while_queued_never_runs(make_engine, tiny_pipe: UnCLIP, slow_steps) -> None:
    slow_steps(0.02)
    engine, stats = make_engine(max_running=1)
    blocker = engine.submit(ops.generate(tiny_pipe, "a", seed=1, opts=LONG), kind="generation")
    op, ran = started_flag(ops.generate(tiny_pipe, "b", seed=2, opts=ONE))
    waiting = engine.submit(op, kind="generation", deadline_s=0.2)
    with pytest.raises(JobExpired):
        result(waiting, timeout=5)
    assert not blocker.future.done(), "the queued job should expire while the first still runs"
    assert waiting.state == "expired" and not ran.is_set() and stats.steps_of(waiting) == 0
    assert stats.started == ["generation"]  # only the blocker ever started
    result(blocker)
    assert ("generation", "expired", 0) in stats.finished


def test_deadline_while_running_stops_the_job(make_engine, tiny_pipe: UnCLIP, slow_steps) -> None:
    slow_steps(0.02)
    engine, stats = make_engine()
    job = engine.submit(ops.generate(tiny_pipe, "a", seed=1, opts=LONG), kind="generation", deadline_s=0.3)
    with pytest.raises(JobExpired):
        result(job, timeout=5)
    steps = stats.steps_of(job)
    assert job.state == "expired" and 0 < steps < 20 + 8 + 4
    time.sleep(0.1)
    assert stats.steps_of(job) == steps


def test_deadline_default_and_cap(make_engine, tiny_pipe: UnCLIP) -> None:
    engine, _ = make_engine(start=False, default_deadline_s=5.0, max_deadline_s=10.0)
    job = engine.submit(ops.generate(tiny_pipe, "a", opts=ONE), kind="generation")
    assert job.deadline - job.submitted == pytest.approx(5.0)
    job = engine.submit(ops.generate(tiny_pipe, "a", opts=ONE), kind="generation", deadline_s=1e6)
    assert job.deadline - job.submitted == pytest.approx(10.0)
    with pytest.raises(ValueError):
        engine.submit(ops.generate(tiny_pipe, "a", opts=ONE), kind="generation", deadline_s=0)


def test_cancel_stops_steps(make_engine, tiny_pipe: UnCLIP, slow_steps) -> None:
    slow_steps(0.01)
    engine, stats = make_engine()
    reached = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.step >= 2:
            reached.set()

    job = engine.submit(ops.generate(tiny_pipe, "a", seed=1, opts=LONG), kind="generation", on_progress=on_progress)
    assert reached.wait(10)
    job.cancel()
    at_cancel = stats.steps_of(job)
    with pytest.raises(JobCancelled):
        result(job, timeout=5)
    time.sleep(0.1)
    print(f"steps at cancel {at_cancel}, after {stats.steps_of(job)} of {20 + 8 + 4}")
    assert job.state == "cancelled" and stats.steps_of(job) <= at_cancel + 1
    assert ("generation", "cancelled", 0) in stats.finished


def test_cancel_queued_job_and_cancelled_future(make_engine, tiny_pipe: UnCLIP) -> None:
    engine, stats = make_engine(start=False)
    op, ran = started_flag(ops.generate(tiny_pipe, "a", opts=ONE))
    queued = engine.submit(op, kind="generation")
    queued.cancel()
    with pytest.raises(JobCancelled):
        result(queued, timeout=1)
    assert queued.state == "cancelled" and engine.queue_depth == 0
    other = engine.submit(ops.generate(tiny_pipe, "b", opts=ONE), kind="generation")
    assert other.future.cancel()  # what asyncio.wrap_future does when the awaiting task is cancelled
    engine.start()
    assert engine.wait_idle(10)
    assert other.state == "cancelled" and not ran.is_set() and stats.started == []


# ---- failures ---------------------------------------------------------------------------

def fails_after_first_stage(op: Operation) -> Operation:
    request = next(op)
    yield request
    raise RuntimeError("op broke after its first stage")


def test_failing_op_fails_alone(make_engine, tiny_pipe: UnCLIP) -> None:
    engine, stats = make_engine()
    good = [engine.submit(ops.generate(tiny_pipe, "a", seed=i, size=32, opts=FAST), kind="generation")
            for i in range(2)]
    bad_input = engine.submit(ops.generate(tiny_pipe, "a", size=999, opts=FAST), kind="generation")
    broken = engine.submit(fails_after_first_stage(ops.generate(tiny_pipe, "b", opts=FAST)), kind="generation")
    with pytest.raises(InvalidInput):
        result(bad_input)
    with pytest.raises(RuntimeError, match="broke"):
        result(broken)
    assert [result(j).images.shape[0] for j in good] == [1, 1]
    assert bad_input.state == broken.state == "failed"
    assert sorted(o for _, o, _ in stats.finished) == ["done", "done", "failed", "failed"]


def recording(op: Operation, tracks: set[int]) -> Operation:
    """Pass an op through, remembering the ids of the tracks it yields."""
    request = next(op)
    while True:
        tracks.update(id(tr) for tr in request.tracks)
        yield request
        try:
            request = op.send(None)
        except StopIteration as stop:
            return stop.value


def test_failing_step_fails_only_its_job(make_engine, tiny_pipe: UnCLIP, monkeypatch) -> None:
    """A decoder step that raises for one job's tracks, after having advanced every track
    of the batch (latents and RNGs): that job fails; the others, restored and retried,
    finish with the images they get alone (batch-invariance tolerance)."""
    poisoned: set[int] = set()
    decoder = tiny_pipe.stages["decoder"]
    original = decoder.step

    def step(tracks):
        original(tracks)
        if any(id(tr) in poisoned for tr in tracks):
            raise RuntimeError("bad sample")

    makers = [lambda s=s: ops.generate(tiny_pipe, "a", seed=s, size=32, opts=FAST) for s in (1, 2)]
    direct = [run_direct(tiny_pipe, make()).images for make in makers]
    monkeypatch.setattr(decoder, "step", step)
    engine, stats = make_engine()
    bad = engine.submit(recording(ops.generate(tiny_pipe, "b", seed=3, size=32, opts=FAST), poisoned),
                        kind="generation")
    good = [engine.submit(make(), kind="generation") for make in makers]
    with pytest.raises(RuntimeError, match="bad sample"):
        result(bad)
    for job, ref in zip(good, direct):
        diff, worst = pixel_diff(result(job).images, ref), float((result(job).images - ref).abs().max()) / 2
        print(f"survivor vs alone: mean {diff * 255:.2g}/255, max {worst * 255:.2g}/255")
        assert diff <= 1 / 255
    assert any(stage == "decoder" and bad.id in ids and len(set(ids)) > 1 for stage, _, ids in stats.batches)


def test_out_of_memory_splits_the_batch(make_engine, tiny_pipe: UnCLIP, monkeypatch) -> None:
    """Decoder calls of more than 2 samples 'run out of memory': the batch of 4 is split
    in halves and every job finishes with the images it gets alone."""
    decoder = tiny_pipe.stages["decoder"]
    original, sizes = decoder.step, []

    def step(tracks):
        sizes.append(len(tracks))
        original(tracks)  # as if it ran out of memory late: the engine must restore the tracks
        if len(tracks) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    makers = [lambda s=s: ops.generate(tiny_pipe, "a", seed=s, size=32, opts=FAST) for s in range(4)]
    direct = [run_direct(tiny_pipe, make()).images for make in makers]
    monkeypatch.setattr(decoder, "step", step)
    engine, _ = make_engine(start=False)
    jobs = [engine.submit(make(), kind="generation") for make in makers]
    engine.start()
    for job, ref in zip(jobs, direct):
        assert pixel_diff(result(job).images, ref) <= 1 / 255 and job.state == "done"
    assert max(sizes) == 4 and 2 in sizes


def test_engine_crash_turns_alive_false(make_engine, tiny_pipe: UnCLIP, monkeypatch) -> None:
    engine, _ = make_engine(start=False)

    def broken(batch):
        raise RuntimeError("engine bug")

    monkeypatch.setattr(engine, "_run", broken)
    job = engine.submit(ops.generate(tiny_pipe, "a", opts=ONE), kind="generation")
    engine.start()
    with pytest.raises(EngineCrashed):
        result(job, timeout=10)
    deadline = time.monotonic() + 5
    while engine.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.alive
    with pytest.raises(EngineStopped):
        engine.submit(ops.generate(tiny_pipe, "a", opts=ONE), kind="generation")


# ---- lifecycle and progress -------------------------------------------------------------

def test_drain_finishes_jobs_and_refuses_new_ones(make_engine, tiny_pipe: UnCLIP, slow_steps) -> None:
    slow_steps(0.005)
    engine, stats = make_engine(max_running=1)
    jobs = [engine.submit(ops.generate(tiny_pipe, "a", seed=i, size=32, opts=FAST), kind="generation")
            for i in range(2)]
    while engine.running == 0:
        time.sleep(0.001)
    engine.drain()
    assert engine.draining and engine.alive
    with pytest.raises(EngineStopped):
        engine.submit(ops.generate(tiny_pipe, "a", opts=ONE), kind="generation")
    assert engine.wait_idle(60)
    assert [j.state for j in jobs] == ["done", "done"] and stats.rejections == ["draining"]
    engine.stop()
    assert not engine.alive


def test_stop_fails_held_jobs(make_engine, tiny_pipe: UnCLIP) -> None:
    engine, _ = make_engine(start=False)
    job = engine.submit(ops.generate(tiny_pipe, "a", opts=ONE), kind="generation")
    engine.stop()
    with pytest.raises(EngineStopped):
        result(job, timeout=1)
    assert not engine.alive and engine.queue_depth == 0


def test_progress_events(make_engine, tiny_pipe: UnCLIP) -> None:
    engine, _ = make_engine()
    events: list[Progress] = []
    job = engine.submit(ops.generate(tiny_pipe, "a", opts=FAST), kind="generation", on_progress=events.append)
    result(job)
    seen = [(p.stage, p.step, p.total) for p in events]
    assert seen == [("prior", i, 3) for i in (1, 2, 3)] + [("decoder", i, 3) for i in (1, 2, 3)] + \
        [("upsampler.0", i, 2) for i in (1, 2)]
    assert {p.job_id for p in events} == {job.id}
    assert job.state == "done"


def test_loader_runs_on_the_engine_thread_before_any_job(tiny_pipe: UnCLIP) -> None:
    """A loader given instead of a pipeline runs on the engine thread (so torch has one
    thread for the load and every step); `loaded` resolves to what it returned, and jobs
    submitted meanwhile wait for it."""
    threads: list[str] = []

    def load() -> UnCLIP:
        time.sleep(0.2)
        threads.append(threading.current_thread().name)
        return tiny_pipe

    engine = Engine(load)
    engine.start()
    try:
        job = engine.submit(ops.generate(tiny_pipe, "a red circle", seed=1, opts=ONE), kind="generation")
        assert engine.loaded.result(timeout=30) is tiny_pipe
        assert job.future.result(timeout=60).images.shape[0] == 1
        assert threads == ["unclip-engine"]
    finally:
        engine.stop(timeout=30)


def test_a_waiter_giving_up_mid_load_does_not_crash_the_engine(tiny_pipe: UnCLIP) -> None:
    """A server shut down while the model loads cancels its await of `loaded`: the load
    still finishes, the engine does not record a crash, and it stops cleanly."""
    loading, release = threading.Event(), threading.Event()

    def load() -> UnCLIP:
        loading.set()
        release.wait(30)
        return tiny_pipe

    engine = Engine(load)
    engine.start()
    try:
        assert loading.wait(10)
        assert not engine.loaded.cancel()
        release.set()
        assert engine.loaded.result(timeout=30) is tiny_pipe
        assert engine.alive
    finally:
        engine.stop(timeout=30)
    assert engine._crash is None


def test_a_loaded_future_cancelled_before_the_load_skips_it() -> None:
    """Cancelled before the engine thread begins, `loaded` stays cancelled, the loader
    never runs and the engine ends without a crash."""
    calls: list[int] = []
    engine = Engine(lambda: calls.append(1))  # type: ignore[arg-type, return-value]
    assert engine.loaded.cancel()
    engine.start()
    engine._thread.join(10)
    assert not engine._thread.is_alive()
    assert calls == [] and engine._crash is None and engine.loaded.cancelled()


def test_a_failing_loader_fails_loaded_and_the_engine() -> None:
    """The loader's exception reaches `loaded`; the engine is then not alive and queued
    jobs fail with EngineCrashed instead of hanging."""

    release = threading.Event()

    def load() -> UnCLIP:
        release.wait(10)
        raise FileNotFoundError("weights/missing/decoder.safetensors")

    engine = Engine(load)
    engine.start()
    queued = engine.submit(iter(()), kind="generation")  # waits for the load
    release.set()
    with pytest.raises(FileNotFoundError, match="decoder.safetensors"):
        engine.loaded.result(timeout=30)
    with pytest.raises(EngineCrashed):
        queued.future.result(timeout=30)
    deadline = time.monotonic() + 10
    while engine.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.alive
    with pytest.raises(EngineCrashed):
        engine.submit(iter(()), kind="generation")
