"""The diffusion training objective shared by the prior, the decoder and the upsamplers:
noise x0 to a uniformly drawn t, regress the configured prediction (eps, x0 or v) with MSE.
An SDEdit-sampled upsampler noises its condition instead of x0 (`diffusion_loss`'s `start`)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from pipelines.config import DiffusionConfig
from pipelines.diffusion import Schedule, _b, q_sample, to_x0_eps

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def diffusion_target(s: Schedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     prediction: str) -> torch.Tensor:
    """What the network should output at x_t = sqrt(abar) x0 + sqrt(1 - abar) noise:
    eps -> noise; x0 -> x0; v -> sqrt(abar) noise - sqrt(1 - abar) x0 (so that
    pipelines.diffusion.to_x0_eps recovers x0 = sqrt(abar) x_t - sqrt(1 - abar) v)."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        a = s.abar(t)
        return _b(a.sqrt(), x0) * noise - _b((1 - a).sqrt(), x0) * x0
    raise ValueError(f"unknown prediction type {prediction!r}")


def check_trainable(cfg: DiffusionConfig, in_channels: int, out_channels: int) -> None:
    """Only fixed variances are trained here: a learned-range model would need the VLB term."""
    if cfg.variance == "learned_range" or out_channels != in_channels:
        raise NotImplementedError("training learned variances (learned_range, 2C outputs) is not implemented: "
                                  "use variance fixed_small / fixed_large and out_channels = in_channels")


def timesteps(n: int, num_timesteps: int, gen: torch.Generator, zero_rows: int = 0, low: int = 0,
              high: int = 0) -> torch.Tensor:
    """[n] int64 uniform in [low, high or T); the first `zero_rows` are 0 (last-step networks)."""
    t = torch.randint(low, high or num_timesteps, (n,), generator=gen)
    t[:zero_rows] = 0
    return t


def diffusion_loss(
    model_fn: ModelFn, x0: torch.Tensor, s: Schedule, prediction: str, gen: torch.Generator,
    t: Optional[torch.Tensor] = None, perturb: float = 0.0, start: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """x0: clean samples [B, ...] on the training device; model_fn(x_t [B, ...], t [B]) ->
    prediction [B, ...]. Noise and t come from the CPU generator gen (device independent).

    perturb > 0: input perturbation against exposure bias (Ning et al. 2023, DDPM-IP): the
    network sees x_t noised with noise + perturb * xi (xi ~ N(0, I)) but regresses the target
    of the unperturbed noise, so it learns to correct the drift of its own sampling
    trajectory. perturb = 0 draws no xi (the same random stream as before).

    start (like x0): the sample noised to x_t instead of x0, the target staying x0's. An
    upsampler sampled by SDEdit from its condition noised to start_t learns exactly the
    step it takes: from x_t = sqrt(abar) start + sqrt(1 - abar) noise to x0, i.e. the
    prediction of the effective noise (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    if t is None:
        t = timesteps(x0.shape[0], s.num_timesteps, gen)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    t = t.to(x0.device)
    seen = noise + perturb * torch.randn(x0.shape, generator=gen).to(x0.device) if perturb > 0 else noise
    x_t = q_sample(s, x0 if start is None else start, t, seen)
    if start is not None:  # the noise that takes x0 to this x_t
        noise = to_x0_eps(s, x_t, t, x0, "x0")[1]
    target = diffusion_target(s, x0, noise, t, prediction)
    return F.mse_loss(model_fn(x_t, t).float(), target.float())
