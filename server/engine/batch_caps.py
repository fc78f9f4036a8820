"""Per-stage batch caps: the most tracks one batched model call of a stage takes.

Batching pays where the device has idle width: on a GPU, and on a CPU for the small
networks (the prior, the 64 px decoder). The shipped model's 128 and 256 px upsamplers
already fill a 2-core CPU at batch 1 and get slower per image in bigger batches (0.59 ->
0.89 s per image at batch 8), so one cap for every stage either wastes the small ones or
slows the big ones. Each stage gets its own, chosen by measurement:

- `measuring` times steps of every stage at batch sizes 1, 2, 4, ... up to `max_batch`
  (in interleaved sweeps, the fastest step counting; a stage's batch stops growing once it
  no longer pays), one model step per `next()`, and returns samples/s per stage and size;
  `measure` runs it to the end;
- `choose` takes the smallest size within `TOLERANCE` of the best samples/s: beyond it a
  bigger batch only adds latency (every track in the call waits for the whole call);
- the profile is cached in a JSON file keyed by what it depends on (the architecture,
  device, dtype, memory format, torch version, threads and sizes tried, not the weights'
  values), so a restart does not measure again;
- `caps_for` gives the caps to serve with at once: the operator's overrides
  (`UNCLIP_STAGE_BATCH`, e.g. `upsampler.1=1,prior=8`), which win, then the cached
  profile's choice, else `max_batch`;
- `calibration` measures what the cache lacks without holding up the start (measuring took
  96 s of a 116 s start on a 2-core CPU): the engine steps it one model step at a time
  while it holds no job (server/engine/core.py) and switches to its caps when it returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Generator, Iterable, Iterator, Mapping, Optional

import torch

from pipelines.operations import generate
from pipelines.unclip import Operation, Sampling, StagedPipeline

log = logging.getLogger(__name__)

TOLERANCE = 0.05  # a bigger batch must be more than 5% faster per sample to be chosen
ROUNDS = 3  # sweeps over the batch sizes
STEPS = 2  # steps per stage of each measuring generation
PROMPT = "a red square above a blue circle"

Rates = dict[str, dict[int, float]]  # stage -> batch size -> samples/s
Calibration = Generator[Optional[str], None, dict[str, int]]  # a model step a next(); returns the caps


def sizes_to_try(max_batch: int) -> list[int]:
    """1, 2, 4, ... below max_batch, and max_batch."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


def choose(rates: Mapping[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest batch size whose samples/s is within `tolerance` of the best."""
    best = max(rates.values())
    return min(b for b, rate in rates.items() if rate >= (1 - tolerance) * best)


def measure(pipe: StagedPipeline, max_batch: int, rounds: int = ROUNDS,
            stages: Optional[Iterable[str]] = None) -> Rates:
    """`measuring` run to its end: samples/s per stage and batch size."""
    run = measuring(pipe, max_batch, rounds, stages)
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value


def measuring(pipe: StagedPipeline, max_batch: int, rounds: int = ROUNDS,
              stages: Optional[Iterable[str]] = None) -> Generator[Optional[str], None, Rates]:
    """Samples/s of a step of each of `stages` (default: all) at batch sizes of
    `sizes_to_try(max_batch)`: `rounds` sweeps over the sizes, one generation per size with
    `STEPS` steps per stage (its images are discarded), yielding None after each step and
    what it timed after each generation. The fastest step of each stage and size counts: a
    shape's first call pays one-time setup, and on a shared host the other processes only
    add interference.

    A sweep stops growing a stage's batch once it no longer pays (`still_scaling`), and each
    generation stops at the output of the last upsampler still measured: on a CPU the 1024 px
    stage saturates at batch 1, and timing it at 2, 4 and 8 would cost minutes of warm-up for
    sizes `choose` cannot pick. Later sweeps time the sizes the earlier ones did and, where
    their faster times now show the stage still scaling, the next sizes too: one slow sample
    in the first sweep (a 2-core host's hiccup) no longer caps a stage for good, which it did
    to the tiny model's bf16 prior (cap 2 where 8 runs 4x faster per sample)."""
    wanted = set(pipe.stages if stages is None else stages)
    seconds: dict[str, dict[int, float]] = {key: {} for key in pipe.stages if key in wanted}
    opts = Sampling(prior_steps=STEPS, decoder_steps=STEPS, upsampler_steps=STEPS, best_of=1)
    for sweep in range(rounds):
        for b in sizes_to_try(max_batch):
            timed = {k for k, by_size in seconds.items() if b in by_size or still_scaling(by_size)}
            if not timed:
                continue
            op = generate(pipe, PROMPT, n=b, seed=0, size=pipe.calibration_output(timed).size, opts=opts)
            for stage, took in _step_times(pipe, op):
                if stage in timed:
                    seconds[stage][b] = min(took, seconds[stage].get(b, took))
                yield None
            yield f"sweep {sweep + 1} of {rounds}: batch {b} of {sorted(timed)}"
    return {stage: {b: b / s for b, s in by_size.items()} for stage, by_size in seconds.items() if by_size}


def still_scaling(seconds: Mapping[int, float]) -> bool:
    """Whether a stage is worth timing at the next batch size: nothing timed yet, or its
    largest size so far is its fastest per sample. seconds: batch size -> step time."""
    if not seconds:
        return True
    rates = {b: b / s for b, s in seconds.items()}
    return max(rates, key=rates.__getitem__) == max(rates)


def _step_times(pipe: StagedPipeline, op: Operation) -> Iterator[tuple[str, float]]:
    """Run the op, each stage request's tracks stepped together to their end; yield
    (stage, seconds) per step."""
    try:
        request = next(op)
        while True:
            tracks = request.tracks
            while not all(tr.done for tr in tracks):
                started = time.perf_counter()
                pipe.stages[request.stage].step([tr for tr in tracks if not tr.done])
                yield request.stage, time.perf_counter() - started
            request = op.send(None)
    except StopIteration:
        return


def profile_key(pipe: StagedPipeline, max_batch: int, stages: Iterable[str]) -> str:
    """What step times depend on, and the stages timed, hashed: not the weights' values."""
    what = pipe.fingerprint() | {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                 "sizes": sizes_to_try(max_batch), "device_name": _device_name(pipe.device),
                                 "stages": sorted(stages)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _device_name(device: torch.device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _profile_path(pipe: StagedPipeline, max_batch: int, cache_dir: Optional[Path], stages: list[str]) -> Optional[Path]:
    name = f"batch-profile-{profile_key(pipe, max_batch, stages)}.json"
    return None if cache_dir is None else Path(cache_dir).expanduser() / name


def _measured_stages(pipe: StagedPipeline, overrides: Mapping[str, int]) -> list[str]:
    return [key for key in pipe.stages if key not in overrides]


def caps_for(pipe: StagedPipeline, max_batch: int, overrides: Mapping[str, int], measured: bool,
             cache_dir: Optional[Path] = None) -> dict[str, int]:
    """Each stage's cap to serve with now: the override, else the cached profile's choice
    (`measured`), else max_batch. Nothing is measured here (`calibration` does)."""
    check_overrides(overrides, pipe.stages, max_batch)
    caps = {stage: max_batch for stage in pipe.stages}
    stages = _measured_stages(pipe, overrides)
    if measured and stages:
        rates = _read(_profile_path(pipe, max_batch, cache_dir, stages))
        if rates is not None:
            caps.update(_chosen(rates, "cached profile"))
    caps.update(overrides)
    return caps


def calibration(pipe: StagedPipeline, max_batch: int, overrides: Mapping[str, int],
                cache_dir: Optional[Path] = None) -> Optional[Calibration]:
    """The measurement of the stages without an override, as a generator to step between
    jobs (one generation a `next()`; returns every stage's cap and caches the profile);
    None when there is nothing to measure or the profile is cached."""
    check_overrides(overrides, pipe.stages, max_batch)
    stages = _measured_stages(pipe, overrides)
    path = _profile_path(pipe, max_batch, cache_dir, stages)
    if not stages or _read(path) is not None:
        return None
    return _calibrate(pipe, max_batch, overrides, stages, path)


def _calibrate(pipe: StagedPipeline, max_batch: int, overrides: Mapping[str, int], stages: list[str],
               path: Optional[Path]) -> Calibration:
    log.info("no cached batch profile: measuring the caps of %s while idle, serving meanwhile", stages)
    started, busy = time.perf_counter(), 0.0
    run = measuring(pipe, max_batch, stages=stages)
    while True:
        unit_started = time.perf_counter()
        try:
            what = next(run)
        except StopIteration as done:
            rates = done.value
            break
        busy += time.perf_counter() - unit_started
        if what is not None:
            log.info("batch profile: %s timed (%.1f s measuring so far)", what, busy)
        yield what
    log.info("measured the stages' batch profile in %.1f s (%.1f s since it began)", busy,
             time.perf_counter() - started)
    _write(path, rates)
    return {stage: max_batch for stage in pipe.stages} | _chosen(rates, "measured") | dict(overrides)


def _chosen(rates: Rates, source: str) -> dict[str, int]:
    """Each stage's `choose`, logged with its samples/s."""
    caps = {stage: choose(by_size) for stage, by_size in rates.items()}
    for stage, by_size in rates.items():
        log.info("stage %s (%s): samples/s by batch size %s -> cap %d", stage, source,
                 {b: round(r, 2) for b, r in sorted(by_size.items())}, caps[stage])
    return caps


def _read(path: Optional[Path]) -> Optional[Rates]:
    if path is None or not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
        return {stage: {int(b): float(r) for b, r in by_size.items()} for stage, by_size in cached.items()}
    except (ValueError, AttributeError):
        log.warning("ignoring an unreadable batch profile %s", path)
        return None


def _write(path: Optional[Path], rates: Rates) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rates, indent=1))
    except OSError as err:
        log.warning("could not cache the batch profile in %s: %s", path, err)


class BadCaps(ValueError):
    """`stage_batch` names a stage the model lacks, or a cap above max_batch."""


def check_overrides(overrides: Mapping[str, int], stages: Iterable[str], max_batch: int) -> None:
    """Raise BadCaps unless every override names one of `stages` with a cap <= max_batch."""
    unknown = sorted(set(overrides) - set(stages))
    if unknown:
        raise BadCaps(f"stage_batch names unknown stages {unknown}; this model has {sorted(stages)}")
    too_big = {k: v for k, v in overrides.items() if v > max_batch}
    if too_big:
        raise BadCaps(f"stage_batch {too_big} exceeds max_batch={max_batch}")


