"""Stage 3: the decoder UNet P(x | z_i, caption) at the base resolution, on the frozen CLIP.

z_i is the CLIP embedding of the same jittered scene the target image shows. For
classifier-free guidance and for the manipulations, which decode with the null caption,
samples are drawn exclusively into: both dropped (z_i -> the learned `cf_param`, caption ->
""), caption alone dropped, z_i alone dropped, or kept whole. An inpainting decoder
(inpaint_channels) also learns, on p_inpaint of the samples, to draw a box given the
pixels around it (GLIDE's inpainting fine-tune); the other samples are given nothing.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from pipelines.diffusion import Schedule
from pipelines.unet import UNet, inpaint_condition

from .data import box_masks, exclusive_draws, sample_batch
from .frozen_clip import check_clip_step, encode, load_clip
from .loop import Task, seed_modules
from .objectives import check_trainable, diffusion_loss
from .run import Run, TrainError


class DecoderTask(Task):
    """The stack's decoder UNet, conditioned on frozen-CLIP image and text encodings."""

    def __init__(self, run: Run, device: torch.device, force: bool = False):
        self.name, self.hp, self.seed, self.device, self.force = (
            "decoder", run.config.decoder, run.config.seed, device, force)
        self.clip, self.clip_step = load_clip(run, device, force)
        cfg = run.config.stack.decoder
        check_trainable(cfg.diffusion, cfg.model.latent_channels, cfg.model.out_channels)
        if self.hp.p_inpaint > 0 and not cfg.model.inpaint_channels:
            raise TrainError("p_inpaint > 0 needs a decoder with inpaint_channels (python -m tools.train widen)")
        self.size = cfg.model.image_size
        self.schedule, self.prediction = Schedule.from_config(cfg.diffusion), cfg.diffusion.prediction
        seed_modules(self.seed, self.name)
        self.module = UNet(cfg.model).to(device)

    def dropouts(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(drop caption [n] bool, drop z_i [n] bool)."""
        hp = self.hp
        d = exclusive_draws(rng, n, {"both": hp.p_drop_both, "text": hp.p_drop_text, "image": hp.p_drop_image})
        return d["both"] | d["text"], d["both"] | d["image"]

    def loss(self, rng: np.random.Generator, gen: torch.Generator, batch: int) -> torch.Tensor:
        b = sample_batch(rng, batch, self.hp.p_canonical)
        drop_text, drop_image = self.dropouts(rng, batch)
        z, text = encode(self.clip, b, b.with_captions(drop_text))
        null = self.module.cf_param[None].to(z.dtype)
        z = torch.where(torch.from_numpy(drop_image).to(self.device)[:, None], null, z)  # [B, D]
        x0 = b.images(self.size).to(self.device)  # [B, 3, S, S]
        inpaint = self.inpaint_input(rng, x0)

        def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.module(x_t, t, z, text.pooled, text.states, text.mask, inpaint=inpaint)

        return diffusion_loss(predict, x0, self.schedule, self.prediction, gen, perturb=self.hp.input_perturbation)

    def inpaint_input(self, rng: np.random.Generator, x0: torch.Tensor) -> Optional[torch.Tensor]:
        """The inpainting input [B, 4, S, S] of x0 [B, 3, S, S] under random box masks
        (p_inpaint of the rows; the rest keep nothing); None when p_inpaint is 0."""
        if self.hp.p_inpaint <= 0:
            return None
        keep = box_masks(rng, x0.shape[0], self.size, self.hp.p_inpaint).to(x0.device)
        return inpaint_condition(x0, keep)

    def meta(self) -> dict[str, Any]:
        return {"clip_step": self.clip_step}

    def check_meta(self, meta: dict[str, Any]) -> None:
        check_clip_step(self.name, int(meta.get("clip_step", -1)), self.clip_step, self.force)


def build(run: Run, device: torch.device, force: bool = False) -> DecoderTask:
    """The decoder stage; needs a finished CLIP stage unless force."""
    return DecoderTask(run, device, force)
