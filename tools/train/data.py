"""On-the-fly training batches from the shapes renderer.

Every random draw of a training step comes from `step_rng(seed, stage, step)`, so batch k
of a stage is the same whether the run went through in one go or was resumed from a
checkpoint. A batch holds scenes, their captions (canonical or partial) and one jitter seed,
so the same jittered geometry can be drawn at several sizes (CLIP input, decoder target,
upsampler low-res and high-res).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from tools.shapes import ATTRIBUTES, Scene, caption_for, random_scenes, render
from tools.shapes.render import Geometry, Window, geometry


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The generator of one training step of one stage."""
    return np.random.default_rng([seed, zlib.crc32(stage.encode()), step])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from `rng` (timesteps, noise, dropout draws)."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


@dataclass
class Batch:
    """scenes: B scenes; captions: B texts; named: the attributes each caption names;
    jitter_seed: seed of the renderer's jitter, shared by every size drawn."""

    scenes: list[Scene]
    captions: list[str]
    named: list[tuple[str, ...]]
    jitter_seed: int

    def __len__(self) -> int:
        return len(self.scenes)

    def images(self, size: int, window: Optional[Window] = None) -> torch.Tensor:
        """The jittered scenes drawn at `size`: [B, 3, size, size] in [-1, 1] (CPU), or only
        their `window` of the size-px canvas: [B, 3, side, side]."""
        rng = np.random.default_rng(self.jitter_seed)
        return images_to_tensor(render(self.scenes, size, rng=rng, jitter=True, window=window))

    def geometry(self) -> Geometry:
        """The jittered drawing parameters every size is drawn with."""
        return geometry(self.scenes, np.random.default_rng(self.jitter_seed), jitter=True)

    def with_captions(self, drop: np.ndarray) -> list[str]:
        """Captions with those where drop [B] bool is True replaced by "" (the null caption)."""
        return ["" if d else c for c, d in zip(self.captions, drop)]


def caption_attributes(rng: np.random.Generator, p_canonical: float) -> tuple[str, ...]:
    """All five attributes with probability p_canonical, else a uniform random subset."""
    if rng.random() < p_canonical:
        return ATTRIBUTES
    keep = rng.random(len(ATTRIBUTES)) < 0.5
    return tuple(a for a, k in zip(ATTRIBUTES, keep) if k)


def sample_batch(rng: np.random.Generator, n: int, p_canonical: float) -> Batch:
    """n uniform scenes with canonical or partial captions."""
    scenes = random_scenes(n, rng)
    named = [caption_attributes(rng, p_canonical) for _ in scenes]
    captions = [caption_for(s, a) for s, a in zip(scenes, named)]
    return Batch(scenes, captions, named, int(rng.integers(2**62)))


INPAINT_BOX_SIDE = (0.25, 0.75)  # box sides of the inpainting masks, fractions of the image side


def box_masks(rng: np.random.Generator, n: int, size: int, p: float) -> torch.Tensor:
    """Keep masks [n, 1, size, size] (1 = pixel given): with probability p a row keeps all
    but one box (sides U(INPAINT_BOX_SIDE) of the image, anywhere inside it), else nothing
    (plain generation). Draws nothing when p = 0."""
    keep = torch.zeros(n, 1, size, size)
    if p <= 0:
        return keep
    picked = rng.random(n) < p
    sides = np.rint(rng.uniform(*INPAINT_BOX_SIDE, size=(n, 2)) * size).astype(int)
    corners = rng.random((n, 2))
    for i in np.flatnonzero(picked):
        h, w = sides[i]
        top, left = (int(c * (size - s + 1)) for c, s in zip(corners[i], (h, w)))
        keep[i] = 1.0
        keep[i, :, top:top + h, left:left + w] = 0.0
    return keep


def compatibility(batch: Batch) -> torch.Tensor:
    """[B, B] bool: entry (i, j) is True when caption i describes image j (scene j agrees on
    every attribute caption i names). The diagonal is True; partial captions and repeated
    scenes give more positives per row and column."""
    values = np.array([[getattr(s, a) for a in ATTRIBUTES] for s in batch.scenes])  # [B, 5]
    named = np.array([[a in n for a in ATTRIBUTES] for n in batch.named])  # [B, 5]
    agree = values[:, None, :] == values[None, :, :]  # [B(i), B(j), 5]
    return torch.from_numpy((agree | ~named[:, None, :]).all(-1))


def exclusive_draws(rng: np.random.Generator, n: int, probs: dict[str, float]) -> dict[str, np.ndarray]:
    """One uniform draw per sample split into exclusive events: {name: [n] bool}, event k
    covering [sum(p_<k), sum(p_<=k)) of the unit interval."""
    u = rng.random(n)
    out, lo = {}, 0.0
    for name, p in probs.items():
        out[name] = (u >= lo) & (u < lo + p)
        lo += p
    if lo > 1.0:
        raise ValueError(f"event probabilities sum to {lo} > 1")
    return out
