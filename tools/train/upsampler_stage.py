"""Stage 4: conv-only upsamplers, trained on crops.

Upsampler i maps size_i -> size_{i+1}. Its condition is the scene rendered at size_i (what
the previous stage produces), optionally degraded, resized to size_{i+1} exactly as the
pipeline resizes it (`pipelines.sampling.upsample_for`); its target is the same jittered
scene rendered at size_{i+1}. Both are cropped at the same place: the networks have no
attention, so what they learn on crops applies to the whole image at inference.

At 512 px and more, rendering whole scenes costs more than the training step, so
`render_crops` draws only the crop and, at size_i, the window under it plus a margin
that the blur and the bicubic resize read (`windows`); the crop of the resized window is
then the crop of the resized whole condition, exactly (away from the canvas' edge).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur
from torchvision.transforms.v2.functional import elastic

from pipelines.diffusion import Schedule
from pipelines.sampling import upsample_for
from pipelines.stack import Upsampler
from tools.shapes.render import Geometry, Window, half_extents

from .config import UpsamplerTrain
from .data import Batch, sample_batch
from .loop import Task, seed_modules
from .objectives import check_trainable, diffusion_loss, timesteps
from .run import Run, stage_name


def random_crops(images: list[torch.Tensor], crop: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """The same random crop (one per sample) of each [B, C, S, S] tensor -> [B, C, crop, crop]."""
    b, size = images[0].shape[0], images[0].shape[-1]
    if crop >= size:
        return images
    ys, xs = rng.integers(0, size - crop + 1, b), rng.integers(0, size - crop + 1, b)
    return [torch.stack([x[i, :, ys[i]:ys[i] + crop, xs[i]:xs[i] + crop] for i in range(b)]) for x in images]


def strengths(rng: np.random.Generator, b: int, p: float, top: float) -> np.ndarray:
    """Per-sample degradation strengths [b]: U(0, top) with probability p, else 0."""
    return np.where(rng.random(b) < p, rng.uniform(0, top, b), 0.0)


def per_row(low: torch.Tensor, amounts: np.ndarray, degrade: Callable[[int, float], torch.Tensor]) -> torch.Tensor:
    """degrade(i, amount) -> [1, C, s, s] for each row i of low [B, C, s, s] whose amount
    exceeds 1e-3 (in row order, so random draws inside `degrade` stay reproducible); the
    other rows are returned untouched."""
    return torch.cat([degrade(i, float(a)) if a > 1e-3 else low[i:i + 1] for i, a in enumerate(amounts)])


def blur_lowres(low: torch.Tensor, rng: np.random.Generator, p: float, max_sigma: float) -> torch.Tensor:
    """With probability p per sample, a Gaussian blur of sigma U(0, max_sigma) pixels:
    [B, 3, s, s] -> [B, 3, s, s]."""
    if p <= 0 or max_sigma <= 0:
        return low
    kernel = 2 * math.ceil(3 * max_sigma) + 1
    return per_row(low, strengths(rng, low.shape[0], p, max_sigma),
                   lambda i, s: gaussian_blur(low[i:i + 1], [kernel, kernel], [s, s]))


def warp_lowres(low: torch.Tensor, rng: np.random.Generator, p: float, max_px: float, grid: int = 10) -> torch.Tensor:
    """With probability p per sample, a smooth random warp that moves pixels by up to
    U(0, max_px) pixels (a `grid` x `grid` random field, bicubic-interpolated): straight
    edges come out wavy, as the decoder draws them. [B, 3, s, s] -> [B, 3, s, s]."""
    if p <= 0 or max_px <= 0:
        return low
    b, s = low.shape[0], low.shape[-1]
    amp = strengths(rng, b, p, max_px)
    pad = math.ceil(max_px) + 1  # replicate the border instead of warping in a fill colour
    big, size = F.pad(low, (pad,) * 4, mode="replicate"), s + 2 * pad

    def warp(i: int, a: float) -> torch.Tensor:
        field = F.interpolate(torch.from_numpy(rng.standard_normal((1, 2, grid, grid), dtype=np.float32)),
                              size=(size, size), mode="bicubic", align_corners=True)
        field = field / field.abs().amax().clamp(min=1e-6) * (a * 2 / size)  # normalized units, max a px
        return elastic(big[i:i + 1], field.permute(0, 2, 3, 1))[..., pad:pad + s, pad:pad + s]

    return per_row(low, amp, warp)


def noise_lowres(low: torch.Tensor, rng: np.random.Generator, p: float, max_std: float) -> torch.Tensor:
    """With probability p per sample, add Gaussian noise of std U(0, max_std): [B, 3, s, s]."""
    if p <= 0 or max_std <= 0:
        return low
    b = low.shape[0]
    std = strengths(rng, b, p, max_std).astype(np.float32)
    noise = torch.from_numpy(rng.standard_normal(low.shape, dtype=np.float32))
    return (low + torch.from_numpy(std)[:, None, None, None] * noise).clamp(-1, 1)


WINDOW_MARGIN = 8  # low-res pixels around a crop's window: the widest blur (sigma 2) and bicubic taps


def crop_corners(rng: np.random.Generator, geo: Geometry, size: int, crop: int, p_shape: float,
                 align: int) -> tuple[np.ndarray, np.ndarray]:
    """(top, left) [B] pixels of each sample's crop on the size-px canvas, multiples of
    `align`: with probability p_shape centred on a uniform point of the shape's bounding
    box, so that most crops hold some outline (at 1024 px a random 128 px crop mostly holds
    flat background), else anywhere."""
    b = len(geo.kind)
    extent = half_extents(geo.kind, geo.radius)  # [B, 2] (x, y)
    centre = np.stack([geo.cy, geo.cx], 1) + rng.uniform(-1, 1, (b, 2)) * extent[:, ::-1]
    anywhere = rng.uniform(0, 1, (b, 2))
    centre = np.where((rng.random(b) < p_shape)[:, None], centre, anywhere)
    corner = np.clip(np.rint((centre * size - crop / 2) / align) * align, 0, size - crop).astype(np.int64)
    return corner[:, 0], corner[:, 1]


def windows(rng: np.random.Generator, batch: Batch, in_size: int, out_size: int,
            hp: UpsamplerTrain) -> tuple[Window, Window]:
    """(the crops at out_size, the windows under them at in_size, WINDOW_MARGIN wider on each side)."""
    f = out_size // in_size
    if out_size % in_size or hp.crop % f:
        raise ValueError(f"render_crops needs out_size / in_size ({out_size} / {in_size}) and crop / factor whole")
    top, left = crop_corners(rng, batch.geometry(), out_size, hp.crop, hp.p_shape_crop, f)
    low = Window(top // f - WINDOW_MARGIN, left // f - WINDOW_MARGIN, hp.crop // f + 2 * WINDOW_MARGIN)
    return Window(top, left, hp.crop), low


def resized_crop(window: torch.Tensor, factor: int, side: int) -> torch.Tensor:
    """A condition window [B, 3, w, w] (`windows`' low-res one) resized by `factor` as the
    pipeline resizes, then the side x side crop it was drawn around: [B, 3, side, side]."""
    start = WINDOW_MARGIN * factor
    return upsample_for(window, window.shape[-1] * factor)[..., start:start + side, start:start + side]


def degrade(low: torch.Tensor, rng: np.random.Generator, hp: UpsamplerTrain) -> torch.Tensor:
    """The training degradations of a low-res condition [B, 3, s, s]: warp, blur, noise."""
    low = warp_lowres(low, rng, hp.p_lowres_warp, hp.lowres_warp)
    low = blur_lowres(low, rng, hp.p_lowres_blur, hp.lowres_blur)
    return noise_lowres(low, rng, hp.p_lowres_noise, hp.lowres_noise)


class UpsamplerTask(Task):
    """Upsampler `index` of the stack (its every-step network and, if any, the last-step one)."""

    def __init__(self, run: Run, index: int, device: torch.device):
        self.name, self.hp, self.seed, self.device = (
            stage_name(index), run.config.upsamplers[index], run.config.seed, device)
        cfg = run.config.stack.upsamplers[index]
        check_trainable(cfg.diffusion, cfg.model.latent_channels, cfg.model.out_channels)
        self.in_size, self.out_size = run.config.stack.sizes[index], cfg.out_size
        self.schedule, self.prediction = Schedule.from_config(cfg.diffusion), cfg.diffusion.prediction
        seed_modules(self.seed, self.name)
        self.module = Upsampler(cfg).to(device)

    def pair(self, rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(target crops, low-res condition crops), each [B, 3, crop, crop] on the device."""
        b = sample_batch(rng, batch, 1.0)
        if self.hp.render_crops:
            crop, under = windows(rng, b, self.in_size, self.out_size, self.hp)
            low = degrade(b.images(self.in_size, under), rng, self.hp)
            high, low = b.images(self.out_size, crop), resized_crop(low, self.out_size // self.in_size, crop.side)
        else:
            low = degrade(b.images(self.in_size), rng, self.hp)
            high, low = random_crops([b.images(self.out_size), upsample_for(low, self.out_size)], self.hp.crop, rng)
        return high.to(self.device), low.contiguous().to(self.device)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """The network the pipeline would run at each row's t (last-step model at t = 0)."""
        if self.module.last_step_model is None:
            return self.module.model(x_t, t, low_res=low)
        out = torch.zeros(x_t.shape, device=x_t.device)
        for last, net in ((False, self.module.model), (True, self.module.last_step_model)):
            rows = (t == 0) == last
            if rows.any():
                out[rows] = net(x_t[rows], t[rows], low_res=low[rows])
        return out

    def loss(self, rng: np.random.Generator, gen: torch.Generator, batch: int) -> torch.Tensor:
        high, low = self.pair(rng, batch)
        zero = math.ceil(batch * self.hp.last_step_fraction) if self.module.last_step_model is not None else 0
        t = timesteps(batch, self.schedule.num_timesteps, gen, zero, self.hp.min_t, self.hp.max_t)
        return diffusion_loss(lambda x_t, tt: self.predict(x_t, tt, low), high, self.schedule, self.prediction, gen, t,
                              start=low if self.hp.sdedit else None)


def build(run: Run, device: torch.device, force: bool = False, index: int = 0) -> UpsamplerTask:
    """Upsampler `index` (it depends on no other stage)."""
    return UpsamplerTask(run, index, device)
