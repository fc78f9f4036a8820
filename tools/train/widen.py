"""Turn a run's trained decoder into an inpainting decoder (GLIDE's inpainting model):

    python -m tools.train widen --run runs/default

The decoder's first convolution gets the 4 input channels of `pipelines.unet.inpaint_condition`
(the kept pixels and the keep mask) with zero weights, so the widened network computes
exactly what it did until training teaches it to read them. train.json's stack gets the
wider decoder; the checkpoint's model and EMA are widened and its AdamW moments dropped (the
optimizer starts afresh and warms up again, as on a snapshot's resume). Set the decoder's
`p_inpaint` in train.json (and its planned `steps`) to train on.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pipelines.config import INPAINT_CHANNELS

from . import checkpoint
from .run import Run, TrainError, write_config

FIRST_CONV = "input_blocks.0.0.weight"  # [C, in_channels, 3, 3]


def widen_weights(state: dict[str, torch.Tensor], channels: int) -> dict[str, torch.Tensor]:
    """A decoder state dict with `channels` zero input channels appended to the first conv."""
    w = state[FIRST_CONV]
    pad = w.new_zeros((w.shape[0], channels) + tuple(w.shape[2:]))
    return dict(state, **{FIRST_CONV: torch.cat([w, pad], dim=1)})


def widen(run: Run) -> str:
    """Widen the run's decoder (config and checkpoint) in place; returns a one-line report."""
    model = run.config.stack.decoder.model
    if model.inpaint_channels:
        raise TrainError(f"the decoder of {run.path} already has {model.inpaint_channels} inpainting channels")
    stage_dir = run.path / "decoder"
    ckpt = checkpoint.load(stage_dir)
    if ckpt is None:
        raise TrainError(f"no decoder checkpoint in {stage_dir} to widen")
    wide = model.with_inpaint_inputs()
    stack = replace(run.config.stack, decoder=replace(run.config.stack.decoder, model=wide))
    for key in ("model", "ema"):
        if key in ckpt:
            ckpt[key] = widen_weights(ckpt[key], INPAINT_CHANNELS)
    ckpt.pop("optimizer", None)
    checkpoint.save(stage_dir, ckpt)
    write_config(run.path, replace(run.config, stack=stack))
    return f"decoder: step {ckpt['step']}, input channels {model.in_channels} -> {wide.in_channels}"
