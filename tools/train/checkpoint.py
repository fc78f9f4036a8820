"""Resumable stage checkpoints, written atomically.

One file per stage, `<run>/<stage>/checkpoint.pt`:

    step        optimizer steps done
    model       the trained module's state dict (fp32)
    ema         its exponential moving average (what export uses)
    optimizer   AdamW state
    rng         torch CPU (and CUDA) RNG states
    meta        stage facts (e.g. the CLIP step a prior was trained on), batch, device
    elapsed_s   training seconds spent on the stage over all sessions

The file is written to a temporary name, flushed to disk and renamed over the old one, so a
session killed mid-write leaves the previous checkpoint intact. It is read back with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

FILE = "checkpoint.pt"


@dataclass
class SavePolicy:
    """Save every `every_steps` steps or `every_minutes` minutes, whichever comes first."""

    every_steps: int
    every_minutes: float
    last_step: int = 0
    last_time: float = field(default_factory=time.monotonic)

    def due(self, step: int) -> bool:
        late = time.monotonic() - self.last_time >= 60.0 * self.every_minutes
        return step - self.last_step >= self.every_steps or late

    def mark(self, step: int) -> None:
        self.last_step, self.last_time = step, time.monotonic()


def path_of(stage_dir: Path) -> Path:
    return Path(stage_dir) / FILE


def rng_state() -> dict[str, Any]:
    """Global torch RNG states (the loop draws from per-step generators; these are kept so
    that anything drawing from the global RNG also resumes where it was)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(stage_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` atomically to <stage_dir>/checkpoint.pt."""
    final = path_of(stage_dir)
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def load(stage_dir: Path, device: str | torch.device = "cpu") -> Optional[dict[str, Any]]:
    """The stage's checkpoint, or None if it has none yet."""
    path = path_of(stage_dir)
    if not path.is_file():
        return None
    return torch.load(path, map_location=device, weights_only=True)


def step_of(stage_dir: Path) -> int:
    """Steps done by a stage (0 without a checkpoint)."""
    ckpt = load(stage_dir)
    return 0 if ckpt is None else int(ckpt["step"])


def load_trained(module: torch.nn.Module, stage_dir: Path) -> dict[str, Any]:
    """Load a stage's EMA weights into `module` (strict) and return the checkpoint's facts
    (step, meta, elapsed_s); raises FileNotFoundError if the stage has no checkpoint."""
    ckpt = load(stage_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {stage_dir}: train that stage first")
    sd = module.state_dict()
    sd.update(ckpt["ema"])
    module.load_state_dict(sd, strict=True)
    return {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer", "rng")}
