"""Diffusion math, apart from the models: schedules, respacing, forward noising, the
posterior, prediction conversions and single-step updates with per-sample timesteps.

Conventions: `t` and `t_prev` are int64 tensors [B] of indices into the full schedule;
`t_prev = -1` means "the clean image" (alpha_bar = 1). Coefficients are computed in fp64
and applied in the dtype of x. Sampling goes t -> t_prev (descending), inversion t -> t_next.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .config import DiffusionConfig


@dataclass(frozen=True)
class Schedule:
    """alphas_cumprod: [T] fp64."""

    alphas_cumprod: torch.Tensor

    @classmethod
    def make(cls, name: str, num_timesteps: int = 1000, beta_range: Optional[tuple[float, float]] = None) -> "Schedule":
        betas = make_betas(name, num_timesteps, beta_range)
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "Schedule":
        given = cfg.beta_start is not None and cfg.beta_end is not None
        return cls.make(cfg.schedule, cfg.num_timesteps, (cfg.beta_start, cfg.beta_end) if given else None)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at t: [B] int in [-1, T) -> [B] fp64 (1.0 at t = -1; t >= T raises
        IndexError). One gather: a sampling step calls this several times, and at small
        sizes its op count shows."""
        return self._abar_table.to(t.device)[t + 1]

    @functools.cached_property
    def _abar_table(self) -> torch.Tensor:
        """alpha_bar after a leading 1.0, the clean image's (t = -1): [T + 1], index t + 1."""
        ac = self.alphas_cumprod
        return torch.cat([torch.ones(1, dtype=ac.dtype, device=ac.device), ac])


def make_betas(name: str, num_timesteps: int, beta_range: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """betas [T] fp64 of a named schedule; "linear" runs over beta_range (default Karlo's
    1e-4 to 0.02, scaled to num_timesteps)."""
    if name == "linear":
        scale = 1000 / num_timesteps
        start, end = beta_range or (scale * 1e-4, scale * 0.02)
        return torch.linspace(start, end, num_timesteps, dtype=torch.float64, device="cpu")
    if name == "squaredcos_cap_v2":
        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), 0.999) for i in range(num_timesteps)]
        return torch.tensor(betas, dtype=torch.float64, device="cpu")
    raise ValueError(f"unknown noise schedule {name!r}")


def respace(num_timesteps: int, steps: int, power: float = 1.0) -> list[int]:
    """`steps` timesteps from num_timesteps - 1 down to 0, descending. power 1: evenly
    spaced, as Karlo / guided-diffusion respace them; power p > 1: t_k = (T - 1) (k / (n - 1))^p,
    denser near t = 0, where the last x0 predictions are made (duplicates merged).

    respace(1000, 7) == [999, 832, 666, 500, 333, 166, 0]; respace(1000, 5, 3) == [999, 421, 125, 16, 0].
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if steps >= num_timesteps:
        return list(range(num_timesteps))[::-1]
    if steps == 1:
        return [num_timesteps - 1]
    if power != 1.0:
        return sorted({round((num_timesteps - 1) * (k / (steps - 1)) ** power) for k in range(steps)}, reverse=True)
    stride = (num_timesteps - 1) / (steps - 1)
    taken, cur = [], 0.0
    for _ in range(steps):
        taken.append(round(cur))
        cur += stride
    return sorted(set(taken), reverse=True)


def spaced(spacing: str, num_timesteps: int, steps: int, power: float = 1.0, offset: int = 0) -> list[int]:
    """`steps` descending timesteps of a chain of num_timesteps, spaced as named: "karlo"
    (`respace`, with power), or as diffusers' schedulers space them: "unclip"
    (UnCLIPScheduler: round(k (T - 1) / (n - 1))) or "leading" (DDPM/DDIM: k (T // n) + offset).

    spaced("unclip", 1000, 4) == [999, 666, 333, 0]; spaced("leading", 1000, 4, offset=1) == [751, 501, 251, 1].
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if spacing == "karlo":
        return respace(num_timesteps, steps, power)
    if spacing == "unclip":
        ratio = (num_timesteps - 1) / max(steps - 1, 1)
        return [round(k * ratio) for k in range(steps)][::-1]
    if spacing == "leading":
        ratio = num_timesteps // steps
        return [k * ratio + offset for k in range(steps)][::-1]
    raise ValueError(f"unknown timestep spacing {spacing!r}")


def _b(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ...] broadcastable against x, in x's dtype."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))


def q_sample(s: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward noising: x_t = sqrt(abar) x0 + sqrt(1 - abar) noise."""
    a = s.abar(t)
    return _b(a.sqrt(), x0) * x0 + _b((1 - a).sqrt(), x0) * noise


def split_output(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Model output [B, C or 2C, ...] -> (prediction [B, C, ...], variance values or None)."""
    if out.dim() > 2 and out.shape[1] == 2 * channels:
        return out[:, :channels], out[:, channels:]
    return out, None


def to_x0_eps(
    s: Schedule, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor, prediction: str,
    clip_x0: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model prediction (eps, x0 or v) to (x0, eps); x0 is clamped to ±clip_x0
    and eps recomputed from the clamped x0 where a clamp is given."""
    a = s.abar(t)
    sa, s1a = _b(a.sqrt(), x_t), _b((1 - a).sqrt(), x_t)
    if prediction == "eps":
        x0 = (x_t - s1a * pred) / sa
    elif prediction == "x0":
        x0 = pred
    elif prediction == "v":
        x0 = sa * x_t - s1a * pred
    else:
        raise ValueError(f"unknown prediction type {prediction!r}")
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    eps = pred if (prediction == "eps" and clip_x0 is None) else (x_t - sa * x0) / s1a
    return x0, eps


def eps_to_x0(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 implied by eps at x_t."""
    return to_x0_eps(s, x_t, t, eps, "eps")[0]


def x0_to_eps(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """eps implied by x0 at x_t."""
    return to_x0_eps(s, x_t, t, x0, "x0")[1]


def posterior(
    s: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(x_{t_prev} | x_t, x0) on the (respaced) chain: mean [B, ...], variance [B] and the
    respaced beta [B] (fp64)."""
    a, ap = s.abar(t), s.abar(t_prev)
    beta = 1 - a / ap
    coef_x0 = ap.sqrt() * beta / (1 - a)
    coef_xt = (1 - beta).sqrt() * (1 - ap) / (1 - a)
    mean = _b(coef_x0, x0) * x0 + _b(coef_xt, x_t) * x_t
    var = (1 - ap) / (1 - a) * beta
    return mean, var, beta


def ddpm_std(
    var: torch.Tensor, beta: torch.Tensor, variance: str, var_values: Optional[torch.Tensor], like: torch.Tensor
) -> torch.Tensor:
    """Standard deviation of the ancestral step, [B, 1, ...] or [B, C, ...] (learned)."""
    min_log = _b(var.clamp(min=1e-20).log(), like)
    if variance == "fixed_small":
        return (0.5 * min_log).exp()
    if variance == "fixed_large":
        return _b(beta.sqrt(), like)
    if variance == "learned_range":
        if var_values is None:
            raise ValueError("learned_range variance needs the model's variance channels")
        frac = (var_values + 1) / 2
        log_var = frac * _b(beta.log(), like) + (1 - frac) * min_log
        return (0.5 * log_var).exp()
    raise ValueError(f"unknown variance type {variance!r}")


def ddpm_step(
    s: Schedule, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
    noise: torch.Tensor, variance: str = "fixed_small", var_values: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t_prev}; no noise where t_prev < 0."""
    mean, var, beta = posterior(s, x0, x_t, t, t_prev)
    std = ddpm_std(var, beta, variance, var_values, x_t)
    last = _b((t_prev < 0).to(torch.float64), x_t)
    return mean + (1 - last) * std * noise


def ddim_step(
    s: Schedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
    eta: torch.Tensor, noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One DDIM step x_t -> x_{t_prev} with per-sample eta [B] (0 = deterministic)."""
    a, ap = s.abar(t), s.abar(t_prev)
    sigma = eta.to(torch.float64).to(a.device) * ((1 - ap) / (1 - a) * (1 - a / ap)).clamp(min=0).sqrt()
    dir_coef = (1 - ap - sigma**2).clamp(min=0).sqrt()
    out = _b(ap.sqrt(), x0) * x0 + _b(dir_coef, eps) * eps
    if noise is not None:
        out = out + _b(sigma, noise) * noise
    return out


def ddim_invert_step(
    s: Schedule, x0: torch.Tensor, eps: torch.Tensor, t_next: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM inversion step x_t -> x_{t_next} (t_next > t)."""
    a = s.abar(t_next)
    return _b(a.sqrt(), x0) * x0 + _b((1 - a).sqrt(), eps) * eps


def ddim_invert_refine(
    s: Schedule, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor
) -> torch.Tensor:
    """Fixed-point refinement of an inversion step: the x_{t_next} from which a DDIM step
    using `eps` (evaluated at the current guess of x_{t_next}) lands exactly on x_t."""
    a, an = s.abar(t), s.abar(t_next)
    return _b((an / a).sqrt(), x_t) * (x_t - _b((1 - a).sqrt(), eps) * eps) + _b((1 - an).sqrt(), eps) * eps


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance per sample: uncond + scale * (cond - uncond); scale: [B]."""
    return uncond + _b(scale, cond) * (cond - uncond)
