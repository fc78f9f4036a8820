"""bench/pipeline.py end to end on the tiny configurations (2 steps, one timed run), so that
the pipeline benchmark of both families cannot rot: both contenders make their images, each
run's time splits into the networks' and the rest, and the result is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench
from bench.pipeline import main


@pytest.mark.parametrize("family, steps", [("karlo", "2,2,2"), ("kandinsky", "2,2")])
def test_a_tiny_run_measures_both_contenders(family: str, steps: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    out = main(["--family", family, "--config", "tiny", "--steps", steps, "--batch", "1,2", "--repeats", "1"])
    assert set(out["results"]) == {1, 2} and out["diffusers"] == "its defaults (fp32)"
    for batch, result in out["results"].items():
        for name in ("ours", "diffusers"):
            run = result[name]
            assert run["images_per_s"] == pytest.approx(batch / run["seconds"])
            assert run["in_models"]["unet" if family == "kandinsky" else "decoder"] > 0
            assert 0 <= run["outside_s"] < run["seconds"]  # each run's own split, never a negative rest
        speeds = result["ours"]["images_per_s"], result["diffusers"]["images_per_s"]
        assert out["ratio"][batch] == pytest.approx(speeds[0] / speeds[1])
    (written,) = tmp_path.glob(f"pipeline-{family}-tiny-*.json")
    assert json.loads(written.read_text())["steps"] == [int(s) for s in steps.split(",")]


def test_the_real_configuration_is_kandinskys_only() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--family", "karlo", "--config", "real"])
    assert exit_.value.code == 2
