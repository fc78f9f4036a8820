"""`python -m tools.train time`: step time of every stage at a preset's sizes, measured on a
few steps in a throw-away run directory, and the training time the preset's step counts
imply on this machine."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .loop import LoopOptions, batch_size, train
from .run import open_run
from .stages import make_task, parameters


def time_stages(preset_name: str, opts: LoopOptions, steps: int = 4) -> list[dict]:
    """One row per stage: parameters, batch, seconds per step (the fastest step after the
    first: on a shared machine the minimum is the least disturbed), planned steps and the
    hours they take at that speed."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = open_run(Path(tmp), preset_name)
        for stage in run.stages():
            task = make_task(stage, run, opts.device, force=True)
            res = train(task, run.stage_dir(stage), LoopOptions(opts.device, opts.precision, until=steps,
                                                                batch=opts.batch, verbose=False))
            step_s = min(res.step_times[1:] or res.step_times)
            planned = run.config.stage(stage).steps
            rows.append({"stage": stage, "params_m": parameters(task.module) / 1e6, "batch": batch_size(task.hp, opts),
                         "step_s": step_s, "steps": planned, "hours": planned * step_s / 3600})
    return rows


def table(rows: list[dict]) -> str:
    """The rows as an aligned text table with a total line."""
    lines = [f"{'stage':<12} {'params':>8} {'batch':>6} {'s/step':>8} {'steps':>7} {'hours':>7}"]
    for r in rows:
        lines.append(f"{r['stage']:<12} {r['params_m']:>7.2f}M {r['batch']:>6} {r['step_s']:>8.3f} {r['steps']:>7} "
                     f"{r['hours']:>7.2f}")
    total_p, total_h = sum(r["params_m"] for r in rows), sum(r["hours"] for r in rows)
    lines.append(f"{'total':<12} {total_p:>7.2f}M {'':>6} {'':>8} {'':>7} {total_h:>7.2f}")
    return "\n".join(lines)
