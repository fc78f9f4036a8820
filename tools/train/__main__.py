"""Train the shapes-world default model, stage by stage, resumably.

    python -m tools.train {clip,prior,decoder,upsampler,export,all,status,time,snapshot,restore,widen,extend} \\
        --run runs/default [--device auto] [--minutes N] [--steps N] [--batch N]

Every stage resumes from its last checkpoint in the run directory, checkpoints every few
minutes and stops cleanly (checkpoint written) before the --minutes budget runs out or on
SIGTERM / Ctrl-C. `all` trains clip -> prior -> decoder -> upsamplers until the budget is
spent and exports once every stage is done. `snapshot` / `restore` write / read the run's
record (committed) and compact checkpoints (git-ignored); restore takes the finished stages
a snapshot has no checkpoint of from the exported model (--model), so a finished training
can be extended from weights/default (tools/train/snapshot.py). `widen` gives a trained decoder the inputs of an
inpainting decoder (tools/train/widen.py); `extend` adds to a run the upsamplers its preset
has gained since the run was created (tools/train/run.py). With CUDA (--device auto picks it) stages run
in bf16 autocast with `gpu_batch_mult` times larger batches.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .checkpoint import load as load_checkpoint
from .checkpoint import step_of
from .export import dir_size, export
from .loop import LoopOptions, LoopResult, StopFlag, batch_size, train
from .run import Run, TrainError, extend, open_run, stage_name
from .snapshot import restore, snapshot
from .stages import make_task, parameters
from .timing import table, time_stages
from .widen import widen

STAGES = ("clip", "prior", "decoder", "upsampler", "export", "all", "status", "time", "snapshot", "restore", "widen",
          "extend")
SNAPSHOT = Path("weights/training/default")
MODEL = Path("weights/default")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--run", type=Path, default=Path("runs/default"), help="run directory (default runs/default)")
    p.add_argument("--preset", default=None, help="configuration of a new run: default | smoke (default: default)")
    p.add_argument("--seed", type=int, default=None, help="seed of a new run (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of this invocation")
    p.add_argument("--steps", type=int, default=None, help="stop each stage at this step (default: its planned steps)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default: the stage's, x gpu_batch_mult on CUDA)")
    p.add_argument("--index", type=int, default=None, help="upsampler: train only this one (default: each in turn)")
    p.add_argument("--force", action="store_true", help="train prior/decoder on an unfinished or changed CLIP")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("weights/default"), help="export / all: model directory to write")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "fp32", "bf16"), help="export: storage dtype")
    p.add_argument("--allow-partial", action="store_true", help="export: untrained stages keep random weights")
    p.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE", help="export: override sampling defaults")
    p.add_argument("--full-token-embedding", action="store_true",
                   help="export: store CLIP's whole token embedding, not only the shapes world's tokens' rows")
    p.add_argument("--snapshot", type=Path, default=SNAPSHOT, help=f"snapshot / restore: folder (default {SNAPSHOT})")
    p.add_argument("--model", type=Path, default=MODEL,
                   help=f"restore: model directory of the finished stages without a checkpoint (default {MODEL})")
    p.add_argument("--no-checkpoints", action="store_true", help="snapshot: write the record only")
    p.add_argument("--quiet", action="store_true")
    return p


def loop_options(args: argparse.Namespace, stop: StopFlag) -> LoopOptions:
    """Device, precision, batch, step target and deadline of this invocation."""
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    deadline = time.monotonic() + 60.0 * args.minutes if args.minutes else None
    return LoopOptions(device, precision, args.steps, args.batch, deadline, stop, not args.quiet)


def train_stage(run: Run, stage: str, opts: LoopOptions, force: bool) -> LoopResult:
    """Build one stage's task and train it under opts."""
    task = make_task(stage, run, opts.device, force)
    if opts.verbose:
        print(f"[{stage}] {parameters(task.module) / 1e6:.2f} M parameters, batch {batch_size(task.hp, opts)}, "
              f"{opts.device} {opts.precision}, target step {opts.until or task.hp.steps}", flush=True)
    res = train(task, run.stage_dir(stage), opts)
    if opts.verbose:
        print(f"[{stage}] {res.reason} at step {res.step}/{task.hp.steps}", flush=True)
    return res


def stage_done(run: Run, stage: str, opts: LoopOptions) -> bool:
    """Whether a stage has reached this invocation's target step."""
    return step_of(run.stage_dir(stage)) >= (opts.until or run.config.stage(stage).steps)


def train_all(run: Run, opts: LoopOptions, args: argparse.Namespace) -> bool:
    """Train every unfinished stage in order; export when all are done. True if exported."""
    for stage in run.stages():
        if stage_done(run, stage, opts):
            continue
        if train_stage(run, stage, opts, args.force).reason != "done":
            return False
    if args.steps is not None and any(args.steps < run.config.stage(s).steps for s in run.stages()):
        return False  # stopped early on purpose: the planned model is not finished
    do_export(run, args)
    return True


def do_export(run: Run, args: argparse.Namespace) -> Path:
    out = export(run, args.out, args.dtype, args.allow_partial, args.set, not args.full_token_embedding)
    print(f"exported {out} ({dir_size(out) / 2**20:.1f} MiB, {args.dtype})", flush=True)
    return out


def status(run: Run) -> str:
    """Progress of each stage: steps, hours spent, last logged loss and s/step, hours left."""
    lines = [f"run {run.path} (preset {run.config.name}, seed {run.config.seed})"]
    for stage in run.stages():
        ckpt, planned = load_checkpoint(run.stage_dir(stage)), run.config.stage(stage).steps
        step, spent = (0, 0.0) if ckpt is None else (int(ckpt["step"]), float(ckpt.get("elapsed_s", 0)))
        last = latest_logged(run.stage_dir(stage) / "log.jsonl")
        text = f"  {stage:<12} {step:>6}/{planned:<6} spent {spent / 3600:5.2f} h"
        if last:
            left = max(0, planned - step) * last["step_s"] / 3600
            text += f"  loss {last['loss']:.4f}  {last['step_s']:.2f} s/step  left ~{left:.2f} h"
            text += "".join(f" {k} {v:.3f}" for k, v in last.items() if k.startswith("zs_"))
        lines.append(text)
    return "\n".join(lines)


def latest_logged(path: Path) -> dict:
    """The latest logged value of every key of a stage log (empty dict if none)."""
    latest: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            latest.update(json.loads(line))
    return latest


def dispatch(args: argparse.Namespace, opts: LoopOptions) -> int:
    """Run the chosen command; returns the exit status."""
    if args.stage == "time":
        print(table(time_stages(args.preset or "default", opts)))
        return 0
    if args.stage == "restore":
        print("\n".join(restore(args.snapshot, args.run, args.model)))
        return 0
    run = open_run(args.run, args.preset, args.seed)
    if args.stage == "snapshot":
        print("\n".join(snapshot(run, args.snapshot, not args.no_checkpoints))
              + f"\n{dir_size(args.snapshot) / 2**20:.1f} MiB in {args.snapshot}")
    elif args.stage == "status":
        print(status(run))
    elif args.stage == "widen":
        print(widen(run))
    elif args.stage == "extend":
        print("\n".join(extend(run)) or "nothing to add")
    elif args.stage == "export":
        do_export(run, args)
    elif args.stage == "all":
        train_all(run, opts, args)
    elif args.stage == "upsampler":
        n = len(run.config.stack.upsamplers)
        for i in ([args.index] if args.index is not None else range(n)):
            if train_stage(run, stage_name(i), opts, args.force).reason != "done":
                break
    else:
        train_stage(run, args.stage, opts, args.force)
    return 0


def main(argv: Optional[Sequence[str]] = None, stop: Optional[StopFlag] = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line message on a refused stage)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if stop is None:
        stop = StopFlag()
        stop.install()
    try:
        return dispatch(args, loop_options(args, stop))
    except (TrainError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
