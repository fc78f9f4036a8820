"""The trainable stages by name, and how to build each one's Task."""

from __future__ import annotations

import torch

from pipelines.stage_keys import upsampler_index

from . import clip_stage, decoder_stage, prior_stage, upsampler_stage
from .loop import Task
from .run import Run


def make_task(stage: str, run: Run, device: torch.device, force: bool = False) -> Task:
    """The Task of "clip", "prior", "decoder" or "upsampler_{i}"."""
    index = upsampler_index(stage)
    if index is not None:
        return upsampler_stage.build(run, device, force, index=index)
    builders = {"clip": clip_stage.build, "prior": prior_stage.build, "decoder": decoder_stage.build}
    if stage not in builders:
        raise ValueError(f"unknown stage {stage!r}; stages: {run.stages()}")
    return builders[stage](run, device, force)


def parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
