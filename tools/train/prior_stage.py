"""Stage 2: the diffusion prior P(z_i | caption) on the frozen CLIP.

The prior works in the normalized space (z_i - clip_mean) / clip_std of the run's CLIP
statistics, predicts x0 as the paper's prior does, and learns the unconditional case from
captions replaced by "" (classifier-free guidance). Partial captions teach it to fill in
what a caption leaves open with variety.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipelines.diffusion import Schedule
from pipelines.prior import PriorTransformer

from .data import sample_batch
from .frozen_clip import check_clip_step, encode, ensure_stats, load_clip
from .loop import Task, seed_modules
from .objectives import diffusion_loss
from .run import Run


class PriorTask(Task):
    """PriorTransformer of the stack config, conditioned on frozen-CLIP text encodings."""

    def __init__(self, run: Run, device: torch.device, force: bool = False):
        self.name, self.hp, self.seed, self.device, self.force = (
            "prior", run.config.prior, run.config.seed, device, force)
        self.clip, self.clip_step = load_clip(run, device, force)
        mean, std = ensure_stats(run, self.clip, self.clip_step)
        self.mean, self.std = mean.to(device), std.to(device)
        cfg = run.config.stack.prior
        self.schedule, self.prediction = Schedule.from_config(cfg.diffusion), cfg.diffusion.prediction
        seed_modules(self.seed, self.name)
        self.module = PriorTransformer(cfg.model).to(device)

    def loss(self, rng: np.random.Generator, gen: torch.Generator, batch: int) -> torch.Tensor:
        b = sample_batch(rng, batch, self.hp.p_canonical)
        drop = rng.random(batch) < self.hp.p_drop_text
        z, text = encode(self.clip, b, b.with_captions(drop))
        x0 = (z - self.mean) / self.std  # [B, D]

        def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.module(x_t, t, text.pooled, text.states, text.mask)

        return diffusion_loss(predict, x0, self.schedule, self.prediction, gen)

    def meta(self) -> dict[str, Any]:
        return {"clip_step": self.clip_step}

    def check_meta(self, meta: dict[str, Any]) -> None:
        check_clip_step(self.name, int(meta.get("clip_step", -1)), self.clip_step, self.force)


def build(run: Run, device: torch.device, force: bool = False) -> PriorTask:
    """The prior stage; needs a finished CLIP stage unless force."""
    return PriorTask(run, device, force)
