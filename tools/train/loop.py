"""The one training loop every stage shares: resume, step, average, log, checkpoint, stop.

A stage is a `Task`: its trainable module and a loss of one step's batch. The loop owns the
optimizer (AdamW, warm-up + cosine schedule), the EMA, mixed precision, the wall-clock
budget and the checkpoints. Each step's randomness comes from `data.step_rng(seed, stage,
step)`, so resuming from a checkpoint at step k gives the same steps k, k+1, ... as an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from . import checkpoint
from .config import StageTrain
from .data import step_rng, torch_generator
from .ema import EMA


def seed_modules(seed: int, stage: str) -> None:
    """Seed torch's global RNG before building a stage's modules (the same initial weights
    in every session; a resumed stage then loads its checkpoint over them)."""
    torch.manual_seed(seed * 1_000_003 + zlib.crc32(stage.encode()))


class Task:
    """One trainable stage. Subclasses set `name`, `hp`, `seed`, `device`, `module` and
    implement `loss`."""

    name: str
    hp: StageTrain
    seed: int
    device: torch.device
    module: nn.Module

    def loss(self, rng: np.random.Generator, gen: torch.Generator, batch: int) -> torch.Tensor:
        """The scalar training loss of one batch of `batch` samples drawn from rng / gen."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """Facts saved with the checkpoint (e.g. which CLIP the stage was trained on)."""
        return {}

    def check_meta(self, meta: dict[str, Any]) -> None:
        """Raise if a checkpoint's facts make resuming wrong (e.g. CLIP changed since)."""

    def probe(self, step: int) -> dict[str, float]:
        """Extra metrics logged every so often (empty by default)."""
        return {}


@dataclass
class StopFlag:
    """Set by SIGTERM / SIGINT: the loop saves and returns after the current step."""

    requested: bool = False

    def install(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.requested = True
            print(f"signal {signum}: stopping after this step", flush=True)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


@dataclass
class LoopOptions:
    """How this session trains: device, precision ("fp32" / "bf16"), where to stop."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    until: Optional[int] = None  # stop at this step (default: the stage's configured steps)
    batch: Optional[int] = None  # default: hp.batch, times hp.gpu_batch_mult on CUDA
    deadline: Optional[float] = None  # time.monotonic() by which to have stopped
    stop: StopFlag = field(default_factory=StopFlag)
    verbose: bool = True


@dataclass
class LoopResult:
    """step: steps done; done: step >= the configured steps; reason: why it returned;
    step_times: seconds of each step of this session."""

    stage: str
    step: int
    done: bool
    reason: str
    step_times: list[float]


def lr_at(step: int, hp: StageTrain) -> float:
    """Linear warm-up to hp.lr, cosine decay to hp.lr * min_lr_ratio at hp.steps, then flat."""
    if step < hp.warmup:
        return hp.lr * (step + 1) / hp.warmup
    frac = min(1.0, (step - hp.warmup) / max(1, hp.steps - hp.warmup))
    return hp.lr * (hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(module: nn.Module, hp: StageTrain) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, embeddings and scalars."""
    decay, rest = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (rest if plain else decay).append(p)
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, 0.99), eps=1e-8)


def batch_size(hp: StageTrain, opts: LoopOptions) -> int:
    if opts.batch:
        return opts.batch
    return hp.batch * (hp.gpu_batch_mult if opts.device.type == "cuda" else 1)


def autocast(opts: LoopOptions) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked; plain fp32 otherwise (bf16 is slow on these CPUs)."""
    if opts.precision == "bf16" and opts.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(task: Task, opt: torch.optim.Optimizer, step: int, batch: int, opts: LoopOptions,
               lr_scale: float = 1.0) -> float:
    """One optimizer step at the scheduled learning rate (times lr_scale); returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, task.hp) * lr_scale
    rng = step_rng(task.seed, task.name, step)
    with autocast(opts):
        loss = task.loss(rng, torch_generator(rng), batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(task.module.parameters(), task.hp.grad_clip)
    opt.step()
    return float(loss.detach())


def resume(task: Task, stage_dir: Path, opt: torch.optim.Optimizer, ema: EMA) -> tuple[int, float, bool]:
    """Load the stage's checkpoint if any; returns (step, elapsed seconds, whether the
    optimizer starts afresh: a snapshot (tools/train/snapshot.py) keeps no AdamW state)."""
    ckpt = checkpoint.load(stage_dir, task.device)
    if ckpt is None:
        return 0, 0.0, False
    task.check_meta(ckpt.get("meta", {}))
    task.module.load_state_dict(ckpt.get("model", ckpt["ema"]))  # a finished stage's snapshot: EMA only
    ema.load_state_dict(ckpt["ema"])
    fresh = "optimizer" not in ckpt
    if not fresh:
        opt.load_state_dict(ckpt["optimizer"])
    if "rng" in ckpt:
        checkpoint.set_rng_state({k: (v.cpu() if torch.is_tensor(v) else [t.cpu() for t in v])
                                  for k, v in ckpt["rng"].items()})
    return int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0)), fresh


def save(task: Task, stage_dir: Path, opt, ema: EMA, step: int, elapsed: float, batch: int) -> None:
    meta = dict(task.meta(), batch=batch, device=str(task.device))
    checkpoint.save(stage_dir, {
        "step": step, "model": task.module.state_dict(), "ema": ema.state_dict(),
        "optimizer": opt.state_dict(), "rng": checkpoint.rng_state(), "meta": meta, "elapsed_s": elapsed,
    })


class Logger:
    """Prints a line every `every` steps and appends it to <stage_dir>/log.jsonl."""

    def __init__(self, stage_dir: Path, name: str, every: int, verbose: bool):
        self.path, self.name, self.every, self.verbose = stage_dir / "log.jsonl", name, max(1, every), verbose
        self.losses: list[float] = []

    def step(self, step: int, target: int, loss: float, lr: float, dt: float, extra: dict[str, float]) -> None:
        """Record one step's loss; write a row every `every` steps, at the target or with extras."""
        self.losses.append(loss)
        if step % self.every == 0 or step == target or extra:
            self.write(step, target, lr, dt, extra)

    def write(self, step: int, target: int, lr: float, dt: float, extra: dict[str, float]) -> None:
        """Write the mean loss of the steps since the last row."""
        if not self.losses:
            return
        mean = float(np.mean(self.losses))
        self.losses = []
        row = {"step": step, "loss": round(mean, 6), "lr": lr, "step_s": round(dt, 4), **extra, "time": time.time()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.verbose:
            eta = (target - step) * dt / 60
            more = "".join(f" {k} {v:.3f}" for k, v in extra.items())
            print(f"[{self.name}] step {step}/{target} loss {mean:.4f} lr {lr:.2e} {dt:.2f} s/step "
                  f"eta {eta:.0f} min{more}", flush=True)


def out_of_time(opts: LoopOptions, est_step: float) -> bool:
    """True when another step (with margin for a checkpoint) would overrun the deadline."""
    return opts.deadline is not None and time.monotonic() + 1.5 * est_step + 5.0 > opts.deadline


def train(task: Task, stage_dir: Path, opts: LoopOptions) -> LoopResult:
    """Train `task` from its checkpoint until opts.until / hp.steps, the deadline or a stop
    signal; checkpoints by the stage's save policy and before returning."""
    hp = task.hp
    opt, ema = make_optimizer(task.module, hp), EMA(task.module, hp.ema_decay)
    step, elapsed, fresh = resume(task, stage_dir, opt, ema)
    rewarm_from = step if fresh else None  # fresh AdamW moments: warm the learning rate up again
    target, batch = opts.until or hp.steps, batch_size(hp, opts)
    policy = checkpoint.SavePolicy(hp.save_every, hp.save_minutes, last_step=step)
    log, times = Logger(stage_dir, task.name, hp.log_every, opts.verbose), []
    reason = "done" if step >= target else ""
    task.module.train()
    while not reason:
        if opts.stop.requested or out_of_time(opts, max(times[-3:], default=0.0)):
            reason = "stopped" if opts.stop.requested else "out of time"
            break
        t0 = time.monotonic()
        scale = 1.0 if rewarm_from is None else min(1.0, (step - rewarm_from + 1) / max(1, hp.warmup))
        loss = train_step(task, opt, step, batch, opts, scale)
        ema.update(task.module, step)
        step += 1
        times.append(time.monotonic() - t0)
        elapsed += times[-1]
        probe = task.probe(step)
        log.step(step, target, loss, lr_at(step - 1, hp), times[-1], probe)
        if not math.isfinite(loss):
            raise FloatingPointError(f"[{task.name}] loss became {loss} at step {step}; last checkpoint kept")
        if step >= target:
            reason = "done"
        if policy.due(step) or reason:
            save(task, stage_dir, opt, ema, step, elapsed, batch)
            policy.mark(step)
    if step > policy.last_step:
        save(task, stage_dir, opt, ema, step, elapsed, batch)
    if times:
        log.write(step, target, lr_at(step - 1, hp), times[-1], {})
    return LoopResult(task.name, step, step >= hp.steps, reason, times)
