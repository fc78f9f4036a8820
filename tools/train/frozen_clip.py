"""The trained CLIP, frozen, as the prior and decoder stages (and export) see it, and the
statistics of its image embeddings (clip_mean / clip_std, the prior's normalized space).

Both downstream stages record the CLIP step they were trained on; resuming them on a CLIP
trained further since is refused (their inputs would have changed under them).
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipelines.clip import ClipEncoder, TextEncoding
from tools.shapes import random_scenes, render

from .checkpoint import load_trained
from .data import Batch, images_to_tensor
from .run import Run, TrainError

log = logging.getLogger(__name__)


def load_clip(run: Run, device: torch.device, force: bool = False) -> tuple[ClipEncoder, int]:
    """(frozen ClipEncoder with the CLIP stage's EMA weights, its step). An unfinished CLIP is
    refused unless force; with force and no CLIP checkpoint at all, CLIP stays random (step 0)."""
    enc = ClipEncoder(run.config.stack.clip)
    want = run.config.clip.steps
    try:
        step = int(load_trained(enc.model, run.stage_dir("clip"))["step"])
    except FileNotFoundError:
        if not force:
            raise
        step = 0
        log.warning("no trained CLIP in %s: using random CLIP weights (--force)", run.path)
    if step < want and not force:
        raise TrainError(f"CLIP has trained {step}/{want} steps: finish the clip stage first (or pass --force)")
    return enc.to(device).eval().requires_grad_(False), step


def check_clip_step(stage: str, trained_on: int, current: int, force: bool) -> None:
    """Refuse to resume a stage trained on another CLIP checkpoint, unless force."""
    if trained_on != current and not force:
        raise TrainError(f"{stage} was trained on CLIP step {trained_on} but CLIP is now at step {current}; "
                           "start that stage afresh (delete its folder) or pass --force")


@torch.no_grad()
def compute_stats(clip: ClipEncoder, n: int, seed: int, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std [D] of CLIP image embeddings of n uniformly drawn, jittered scenes."""
    rng = np.random.default_rng([seed, zlib.crc32(b"clip_stats")])
    scenes = random_scenes(n, rng)
    size, zs = clip.cfg.image_size, []
    for i in range(0, n, chunk):
        images = images_to_tensor(render(scenes[i:i + chunk], size, rng=rng, jitter=True))
        zs.append(clip.encode_image(images.to(clip.device)).cpu())
    z = torch.cat(zs)
    return z.mean(0), z.std(0).clamp(min=1e-6)


def ensure_stats(run: Run, clip: ClipEncoder, clip_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's clip_mean / clip_std for CLIP at clip_step, computed once and stored in
    <run>/clip_stats.safetensors (recomputed if CLIP has moved on since). CPU tensors [D]."""
    path = run.stats_path
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            stored = int((f.metadata() or {}).get("clip_step", -1))
        if stored == clip_step:
            data = load_file(str(path))
            return data["mean"], data["std"]
    mean, std = compute_stats(clip, run.config.stats_images, run.config.seed)
    tmp = path.with_suffix(".tmp")
    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(tmp), metadata={"clip_step": str(clip_step)})
    tmp.replace(path)
    return mean, std


def encode(clip: ClipEncoder, batch: Batch, captions: list[str]) -> tuple[torch.Tensor, TextEncoding]:
    """(z_i [B, D] of the batch's images at CLIP's size, text encoding of `captions`)."""
    z = clip.encode_image(batch.images(clip.cfg.image_size).to(clip.device))
    return z, clip.encode_text(captions)
