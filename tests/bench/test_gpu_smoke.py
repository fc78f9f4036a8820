"""bench/gpu/'s CPU smoke mode end to end, so that the one-command GPU benchmark cannot
rot: every section of its JSON holds numbers or an explicit reason it was skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("install", "weights", "precision", "attention", "ours_vs_diffusers", "kandinsky", "http", "flops",
            "cuda_graphs", "compile", "peak_gpu_memory")


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def measured_or_skipped(section: dict, *keys: str) -> None:
    """The section is skipped with a reason, or holds a number at section[keys...]."""
    if section.get("status") == "skipped":
        assert section["reason"], section
        return
    for key in keys:
        section = section[key]
    assert number(section), section


@pytest.mark.slow
def test_smoke_run_records_every_section(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=360)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert (tmp_path / "gpu.log").stat().st_size > 0
    for name in SECTIONS:
        assert results[name]["status"] in ("ok", "skipped"), (name, results[name])
    assert results["install"] == {"status": "skipped", "reason": "smoke mode"}
    for name in ("attention", "flops", "cuda_graphs", "compile", "peak_gpu_memory"):
        assert results[name]["reason"] == "no CUDA", (name, results[name])
    measured_or_skipped(results["weights"], "convert_s")
    for dtype in ("float16", "bfloat16"):
        for stage in ("prior", "decoder", "upsampler.0"):
            measured_or_skipped(results["precision"], dtype, "stages", stage, "max_abs")
        measured_or_skipped(results["precision"], dtype, "end_to_end", "max_abs")
    for batch in ("batch_1", "batch_2"):
        measured_or_skipped(results["ours_vs_diffusers"], batch, "ours_over_diffusers")
    kandinsky = results["kandinsky"]
    for dtype in ("float16", "bfloat16"):
        for stage in ("prior", "decoder", "movq"):
            measured_or_skipped(kandinsky, "precision", dtype, "stages", stage, "max_abs")
        measured_or_skipped(kandinsky, "precision", dtype, "end_to_end", "max_abs")
    measured_or_skipped(kandinsky, "batch_1", "ours_over_diffusers")
    assert results["http"]["status"] == "ok", results["http"]
    for level in ("c1", "c8", "c32"):
        measured_or_skipped(results["http"]["levels"][level], "images_per_s")
