"""What one run measures (`Plan`): presets, steps, batch sizes, load levels and each part's
time budget; `SMOKE` is the CPU smoke mode of the tests."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from typing import Any

PARTS = ("install", "weights", "precision", "attention", "ours_vs_diffusers", "kandinsky", "http", "flops",
         "cuda_graphs", "compile", "peak_gpu_memory")


@dataclass(frozen=True)
class Plan:
    """What to measure and how long each part may take (seconds)."""

    preset: str = "karlo"
    device: str = "cuda"
    steps: tuple[int, int, int] = (25, 25, 7)  # prior, decoder, upsampler: Karlo's fast preset
    batches: tuple[int, ...] = (1, 8)
    kandinsky_steps: tuple[int, int] = (10, 10)  # prior, decoder
    kandinsky_batches: tuple[int, ...] = (1, 8)
    step_batches: tuple[int, ...] = (2, 16)  # rows of one decoder UNet step (flops; the first: graphs, compile)
    timed_steps: int = 10  # decoder steps per timed round (3 rounds)
    matmul_side: int = 8192
    concurrency: tuple[int, ...] = (1, 8, 32)
    duration_s: float = 12.0  # of each HTTP load level
    repeats: int = 2  # timed runs of each, after a warm-up
    max_batch: int = 32  # the server's UNCLIP_MAX_BATCH
    batch_profile: str = "measure"  # the server's UNCLIP_BATCH_PROFILE (measure: caps timed at its start)
    budget_s: float = 480.0
    budgets: dict[str, float] = field(default_factory=lambda: {  # 480 s in all
        "install": 40, "weights": 60, "precision": 45, "attention": 30, "ours_vs_diffusers": 60, "kandinsky": 75,
        "http": 90, "flops": 15, "cuda_graphs": 15, "compile": 50})
    install: bool = True


# 25-45 s on a lightly loaded 2-core CPU (76 s with its cores shared by three busy
# sessions); the budgets leave room for a loaded one, so that the test does not flake.
# The kandinsky part adds 15-45 s (its tiny networks, batch 1 only).
SMOKE = Plan(preset="tiny", device="cpu", steps=(2, 2, 2), batches=(1, 2), kandinsky_steps=(2, 2),
             kandinsky_batches=(1,), duration_s=1.0, repeats=1, max_batch=8, batch_profile="off", budget_s=270.0,
             budgets={"weights": 45, "precision": 45, "ours_vs_diffusers": 60, "kandinsky": 60, "http": 90},
             install=False)


def plan_from(args: argparse.Namespace) -> Plan:
    plan = SMOKE if args.smoke else Plan()
    overrides: dict[str, Any] = {}
    if args.preset:
        overrides["preset"] = args.preset
    if args.device:
        overrides["device"] = args.device
    if args.steps:
        overrides["steps"] = tuple(int(s) for s in args.steps.split(","))
    if args.duration is not None:
        overrides["duration_s"] = args.duration
    if args.budget is not None:
        overrides["budget_s"] = args.budget
    if args.skip_install:
        overrides["install"] = False
    return replace(plan, **overrides)
