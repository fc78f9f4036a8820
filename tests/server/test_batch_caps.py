"""Per-stage batch caps (server/engine/batch_caps.py): the choice rule, the overrides, the cached
profile, the calibration stepped while idle, and a real server that measures its caps after
it turns ready and exports them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.unclip import UnCLIP
from server.engine import batch_caps
from server.engine.batch_caps import BadCaps
from server.settings import Settings, parse_overrides

from .conftest import FAST, REPO, ServerProc


def test_choose_takes_the_smallest_batch_within_tolerance_of_the_best() -> None:
    assert batch_caps.choose({1: 10.0, 2: 10.4, 4: 10.6, 8: 9.0}) == 2  # 4 is only 2% better
    assert batch_caps.choose({1: 1.0, 2: 0.7, 4: 0.6}) == 1  # bigger only slower: the big upsamplers on CPU
    assert batch_caps.choose({1: 100.0, 2: 190.0, 4: 350.0, 8: 600.0}) == 8


def test_sizes_to_try_and_overrides() -> None:
    assert batch_caps.sizes_to_try(8) == [1, 2, 4, 8]
    assert batch_caps.sizes_to_try(6) == [1, 2, 4, 6]
    assert batch_caps.sizes_to_try(1) == [1]
    assert parse_overrides(" upsampler.1=1, prior=8 ") == {"upsampler.1": 1, "prior": 8}
    assert parse_overrides("") == {}
    for bad in ("prior", "prior=0", "prior=x", "prior=-1"):
        with pytest.raises(ValueError, match="stage=N"):
            parse_overrides(bad)
    with pytest.raises(ValueError, match="stage_batch"):
        Settings(stage_batch="prior=none")


def test_overrides_win_and_are_checked_against_the_model(tiny_pipe: UnCLIP, tmp_path: Path) -> None:
    every = {"prior": 3, "decoder": 2, "upsampler.0": 1}
    assert batch_caps.caps_for(tiny_pipe, 4, every, measured=True, cache_dir=tmp_path) == every
    assert batch_caps.calibration(tiny_pipe, 4, every, tmp_path) is None  # nothing left to measure
    assert batch_caps.caps_for(tiny_pipe, 4, {}, measured=False) == {"prior": 4, "decoder": 4, "upsampler.0": 4}
    with pytest.raises(BadCaps, match="upsampler.1"):
        batch_caps.caps_for(tiny_pipe, 4, {"upsampler.1": 1}, measured=False)
    with pytest.raises(BadCaps, match="max_batch=4"):
        batch_caps.caps_for(tiny_pipe, 4, {"prior": 5}, measured=False)


def run_to_end(calibration: batch_caps.Calibration) -> tuple[int, dict[str, int]]:
    """Step a calibration as the engine does; (units it took, the caps it returned)."""
    units = 0
    while True:
        try:
            next(calibration)
            units += 1
        except StopIteration as done:
            return units, done.value


def test_the_profile_is_measured_once_in_steps_and_then_read_from_the_cache(
        tiny_pipe: UnCLIP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = {"prior": {1: 10.0, 2: 19.0, 4: 30.0}, "decoder": {1: 5.0, 2: 5.1, 4: 4.0},
            "upsampler.0": {1: 2.0, 2: 1.5, 4: 1.2}}

    def fake_measuring(pipe: UnCLIP, max_batch: int, stages: list[str]):
        calls.append((max_batch, sorted(stages)))
        for b in (1, 2, 4):
            yield f"batch {b}"
        return {k: v for k, v in fake.items() if k in stages}

    monkeypatch.setattr(batch_caps, "measuring", fake_measuring)
    assert batch_caps.caps_for(tiny_pipe, 4, {"decoder": 3}, measured=True, cache_dir=tmp_path) == {
        "prior": 4, "decoder": 3, "upsampler.0": 4}  # nothing cached yet: max_batch, measured later
    units, first = run_to_end(batch_caps.calibration(tiny_pipe, 4, {"decoder": 3}, tmp_path))
    assert units == 3 and first == {"prior": 4, "decoder": 3, "upsampler.0": 1}
    again = batch_caps.caps_for(tiny_pipe, 4, {"decoder": 2}, measured=True, cache_dir=tmp_path)
    assert again == {"prior": 4, "decoder": 2, "upsampler.0": 1}  # from the cache
    assert batch_caps.calibration(tiny_pipe, 4, {"decoder": 2}, tmp_path) is None
    assert calls == [(4, ["prior", "upsampler.0"])]  # an overridden stage is not timed
    _, every = run_to_end(batch_caps.calibration(tiny_pipe, 4, {}, tmp_path))  # more stages: measured
    assert every == {"prior": 4, "decoder": 1, "upsampler.0": 1}
    run_to_end(batch_caps.calibration(tiny_pipe, 2, {}, tmp_path))  # another profile: measured
    assert [c[0] for c in calls] == [4, 4, 2] and len(list(tmp_path.glob("batch-profile-*.json"))) == 3


def test_measure_times_every_stage_while_its_batch_pays(tiny_pipe: UnCLIP) -> None:
    rates = batch_caps.measure(tiny_pipe, 2, rounds=1)
    assert set(rates) == set(tiny_pipe.stages)
    for by_size in rates.values():
        assert min(by_size.values()) > 0 and 1 in by_size
        assert 2 in by_size or by_size == {1: by_size[1]}
    only = batch_caps.measure(tiny_pipe, 2, rounds=1, stages=["prior"])
    assert set(only) == {"prior"}


def test_a_stage_stops_growing_its_batch_once_it_no_longer_pays(tiny_pipe: UnCLIP) -> None:
    assert batch_caps.still_scaling({})
    assert batch_caps.still_scaling({1: 1.0, 2: 1.2})  # 1.67 samples/s at 2 against 1.0 at 1
    assert not batch_caps.still_scaling({1: 1.0, 2: 2.5})  # slower per sample at 2
    assert not batch_caps.still_scaling({1: 1.0, 2: 1.2, 4: 3.0})
    # generations stop at the output of the last upsampler still timed
    decoder_size, up0_size = tiny_pipe.sizes[0], tiny_pipe.sizes[1]
    assert tiny_pipe.calibration_output({"prior", "decoder"}).size == (decoder_size, decoder_size)
    assert tiny_pipe.calibration_output({"prior", "upsampler.0"}).size == (up0_size, up0_size)


def cap_samples(server: ServerProc) -> dict[str, float]:
    text = httpx.get(server.url("/metrics")).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "unclip_stage_batch_cap")
    return {s.labels["stage"]: s.value for s in family.samples}


def test_a_server_is_ready_before_it_measures_its_caps_then_switches_to_them(
        launch_server: Callable[..., ServerProc], tmp_path: Path) -> None:
    """Measuring the caps held /ready back by 96 s on the default model; now the server is
    ready at once with max_batch, serves while it measures when idle, then exports the caps."""
    env = {"UNCLIP_BATCH_PROFILE": "measure", "UNCLIP_BATCH_PROFILE_DIR": str(tmp_path),
           "UNCLIP_MAX_BATCH": "4", "UNCLIP_STAGE_BATCH": "upsampler.0=1"}
    server = launch_server(env=env)
    with server.http() as http:
        assert http.post("/v1/images/generations", json={"prompt": "a red circle", "size": "32x32",
                                                          **FAST}).status_code == 200
    deadline = time.monotonic() + 120
    while httpx.get(server.url("/ready")).json()["batch_caps"] == "measuring" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(server.url("/ready")).json()["batch_caps"] == "set"
    caps = cap_samples(server)
    assert set(caps) == {"prior", "decoder", "upsampler.0"} and caps["upsampler.0"] == 1
    assert all(1 <= c <= 4 for c in caps.values())
    profiles = list(tmp_path.glob("batch-profile-*.json"))
    assert len(profiles) == 1 and set(json.loads(profiles[0].read_text())) == {"prior", "decoder"}  # not the overridden
    log = server.log()
    assert log.index("ready: model") < log.index("measured the stages' batch profile")
    assert log.count("batch profile: sweep") >= 3 and "samples/s by batch size" in log
    server.stop()
    again = launch_server(env=env)  # the next start takes the cached caps and measures nothing
    assert httpx.get(again.url("/ready")).json()["batch_caps"] == "set" and cap_samples(again) == caps
    assert "cached profile" in again.log() and "measured the stages' batch profile" not in again.log()
    again.stop()


def test_a_stage_batch_the_model_cannot_take_exits_2_naming_it(tiny_model_dir: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "server", "--model-dir", str(tiny_model_dir),
                          "--stage-batch", "upsampler.3=1", "--port", "0"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "upsampler.3" in run.stderr, run.stderr[-2000:]
