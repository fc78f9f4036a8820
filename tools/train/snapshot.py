"""Compact snapshots of a run, small enough to commit, so training spans sessions whose
machines keep nothing outside the repository.

    python -m tools.train snapshot --run runs/default [--snapshot weights/training/default]
    python -m tools.train restore  --run runs/default [--snapshot weights/training/default]

A snapshot keeps, per stage, what resuming needs and no more:

    finished stage   step, meta, elapsed_s and the EMA weights in fp16 (what downstream
                     stages and export read; the shipped model is fp16 too)
    unfinished stage step, meta, elapsed_s, rng, model and EMA in fp32, but no AdamW
                     moments (2x the weights): on resume the optimizer starts afresh and the
                     learning rate warms up again over the stage's warm-up steps

plus `train.json`, `clip_stats.safetensors` and each stage's `log.jsonl`. Restore copies a
snapshot into a run directory, never over a stage that has trained further there.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from . import checkpoint
from .run import CONFIG_FILE, STATS_FILE, Run, open_run

LOG_FILE = "log.jsonl"


def compact(ckpt: dict[str, Any], finished: bool) -> dict[str, Any]:
    """The part of a stage checkpoint a snapshot keeps (see the module's notes)."""
    out = {k: ckpt[k] for k in ("step", "meta", "elapsed_s") if k in ckpt}
    if finished:
        out["ema"] = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["ema"].items()}
    else:
        out.update({k: ckpt[k] for k in ("model", "ema", "rng") if k in ckpt})
    return out


def snapshot(run: Run, out: Path) -> list[str]:
    """Write a compact snapshot of `run` to `out`; returns one line per stage."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, STATS_FILE):
        if (run.path / name).is_file():
            shutil.copy2(run.path / name, out / name)
    lines = []
    for stage in run.stages():
        ckpt = checkpoint.load(run.path / stage)
        if ckpt is None:
            continue
        finished = int(ckpt["step"]) >= run.config.stage(stage).steps
        (out / stage).mkdir(exist_ok=True)
        checkpoint.save(out / stage, compact(ckpt, finished))
        if (run.path / stage / LOG_FILE).is_file():
            shutil.copy2(run.path / stage / LOG_FILE, out / stage / LOG_FILE)
        lines.append(f"{stage}: step {ckpt['step']} ({'finished' if finished else 'resumable'})")
    return lines


def restore(snap: Path, run_path: Path) -> list[str]:
    """Copy the snapshot at `snap` into the run directory `run_path` (created from the
    snapshot's train.json if absent); stages further along in the run are kept."""
    if not (snap / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no snapshot at {snap} (no {CONFIG_FILE})")
    run_path.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, STATS_FILE):
        if (snap / name).is_file() and not (run_path / name).is_file():
            shutil.copy2(snap / name, run_path / name)
    run = open_run(run_path)
    lines = []
    for stage in run.stages():
        if not (snap / stage / checkpoint.FILE).is_file():
            continue
        have, got = checkpoint.step_of(run.path / stage), checkpoint.step_of(snap / stage)
        if got <= have:
            lines.append(f"{stage}: kept the run's step {have} (snapshot: {got})")
            continue
        for name in (checkpoint.FILE, LOG_FILE):
            if (snap / stage / name).is_file():
                shutil.copy2(snap / stage / name, run.stage_dir(stage) / name)
        lines.append(f"{stage}: restored step {got}")
    return lines
