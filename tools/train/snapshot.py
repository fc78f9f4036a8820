"""Snapshots of a run: a small training record that is committed, and checkpoints that are
not, so that a finished training can be extended from the exported model directory.

    python -m tools.train snapshot --run runs/default [--snapshot weights/training/default]
    python -m tools.train restore  --run runs/default [--snapshot weights/training/default] \\
        [--model weights/default]

A snapshot folder holds the record of the run (tracked in git; a few hundred KiB):

    train.json               the run's frozen configuration
    clip_stats.safetensors   its CLIP statistics (with the CLIP step they belong to)
    stages.json              per stage: step, meta, elapsed_s and whether it is finished
    <stage>/log.jsonl        each stage's training log

and, per stage, a compact `<stage>/checkpoint.pt` (git-ignored under weights/training/:
the tracked tree must stay small enough for the GPU device tool to copy it):

    finished stage   step, meta, elapsed_s and the EMA weights in fp16 (what downstream
                     stages and export read; the shipped model is fp16 too)
    unfinished stage step, meta, elapsed_s, rng, model and EMA in fp32, but no AdamW
                     moments (2x the weights): on resume the optimizer starts afresh and the
                     learning rate warms up again over the stage's warm-up steps

Restore copies a snapshot into a run directory, never over a stage that has trained further
there. A stage whose checkpoint is not in the snapshot (a fresh clone) but which the record
says is finished is restored from the exported model directory (`--model`, default
weights/default): its EMA weights are exactly the tensors export wrote (export stores the
EMA), so the restored run exports the same model again and any stage can be trained further
from it (`--steps N`, fresh optimizer, learning rate re-warmed). An unfinished stage needs
its checkpoint: carry the snapshot folder or the run directory between machines.

A CLIP file whose token embedding is stored pruned (export's default: the rows of the
shapes world's tokens and one fallback row) restores as the full matrix with every other
row set to that fallback row, not to the initial noise it had in training. No shapes-world
caption reads those rows, and export prunes them again, so the restored run still exports
the same model bit for bit; a CLIP trained further on shapes captions never touches them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from pipelines.checkpoints import CONFIG_FILE as MODEL_CONFIG_FILE
from pipelines.checkpoints import build_on_meta, module_files, read_weights
from pipelines.config import StackConfig

from . import checkpoint
from .export import module_of
from .run import CONFIG_FILE, STATS_FILE, Run, TrainError, open_run

LOG_FILE = "log.jsonl"
STAGES_FILE = "stages.json"
FACTS = ("step", "meta", "elapsed_s")


def compact(ckpt: dict[str, Any], finished: bool) -> dict[str, Any]:
    """The part of a stage checkpoint a snapshot keeps (see the module's notes)."""
    out = {k: ckpt[k] for k in FACTS if k in ckpt}
    if finished:
        out["ema"] = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["ema"].items()}
    else:
        out.update({k: ckpt[k] for k in ("model", "ema", "rng") if k in ckpt})
    return out


def snapshot(run: Run, out: Path, checkpoints: bool = True) -> list[str]:
    """Write a snapshot of `run` to `out` (the record, and each stage's compact checkpoint
    unless not `checkpoints`); returns one line per stage."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, STATS_FILE):
        if (run.path / name).is_file():
            shutil.copy2(run.path / name, out / name)
    lines, record = [], {}
    for stage in run.stages():
        ckpt = checkpoint.load(run.path / stage)
        if ckpt is None:
            continue
        finished = int(ckpt["step"]) >= run.config.stage(stage).steps
        record[stage] = {**{k: ckpt[k] for k in FACTS if k in ckpt}, "finished": finished}
        (out / stage).mkdir(exist_ok=True)
        if checkpoints:
            checkpoint.save(out / stage, compact(ckpt, finished))
        if (run.path / stage / LOG_FILE).is_file():
            shutil.copy2(run.path / stage / LOG_FILE, out / stage / LOG_FILE)
        lines.append(f"{stage}: step {ckpt['step']} ({'finished' if finished else 'resumable'})")
    (out / STAGES_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return lines


def model_stage_weights(run: Run, model: Path, stage: str) -> dict[str, torch.Tensor]:
    """A stage's weights as exported to the model directory `model`, checked against the
    run's architecture (same names and shapes as the stage's floating state)."""
    name = module_of(stage)
    cfg_file = model / MODEL_CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no model directory at {model} (no {MODEL_CONFIG_FILE}) to restore {stage} from")
    path = model / module_files(StackConfig.load(cfg_file))[name]
    module = build_on_meta(run.config.stack).get_submodule(name)
    want = {k: v.shape for k, v in module.state_dict().items() if v.is_floating_point()}
    got = read_weights(path, module)
    shapes = {k: v.shape for k, v in got.items() if v.is_floating_point()}
    if shapes != want:
        wrong = sorted(set(shapes) ^ set(want)) or sorted(k for k in want if shapes[k] != want[k])
        raise TrainError(f"{path} is not the run's {stage} (differs at {wrong[:3]}): export that run to {model} "
                         "or restore from its checkpoints")
    return {k: got[k] for k in want}


def restore(snap: Path, run_path: Path, model: Optional[Path] = None) -> list[str]:
    """Copy the snapshot at `snap` into the run directory `run_path` (created from the
    snapshot's train.json if absent); stages further along in the run are kept. A finished
    stage without a checkpoint in the snapshot is restored from the model directory `model`."""
    if not (snap / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no snapshot at {snap} (no {CONFIG_FILE})")
    run_path.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, STATS_FILE):
        if (snap / name).is_file() and not (run_path / name).is_file():
            shutil.copy2(snap / name, run_path / name)
    run = open_run(run_path)
    record = json.loads((snap / STAGES_FILE).read_text()) if (snap / STAGES_FILE).is_file() else {}
    lines = []
    for stage in run.stages():
        in_snap = (snap / stage / checkpoint.FILE).is_file()
        facts = record.get(stage)
        if not in_snap and facts is None:
            continue
        have, got = checkpoint.step_of(run.path / stage), checkpoint.step_of(snap / stage) if in_snap else facts["step"]
        if got <= have:
            lines.append(f"{stage}: kept the run's step {have} (snapshot: {got})")
            continue
        if in_snap:
            shutil.copy2(snap / stage / checkpoint.FILE, run.stage_dir(stage) / checkpoint.FILE)
            source = "its checkpoint"
        elif facts.get("finished") and model is not None:
            ema = model_stage_weights(run, model, stage)
            checkpoint.save(run.stage_dir(stage), {**{k: facts[k] for k in FACTS if k in facts}, "ema": ema})
            source = f"{model}"
        else:
            why = "unfinished: its checkpoint is not in the snapshot" if not facts.get("finished") else "no --model"
            lines.append(f"{stage}: NOT restored, step {got} ({why})")
            continue
        if (snap / stage / LOG_FILE).is_file():
            shutil.copy2(snap / stage / LOG_FILE, run.stage_dir(stage) / LOG_FILE)
        lines.append(f"{stage}: restored step {got} from {source}")
    return lines
