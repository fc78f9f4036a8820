"""Diffusion math apart from the models: respacing, schedules, q_sample, conversions, the
posterior, DDIM / inversion, guidance, per-sample timesteps, and batched `Stage.step`."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import pytest
import torch

from pipelines import diffusion as D
from pipelines.checkpoints import random_stack
from pipelines.config import StackConfig
from pipelines.sampling import Track, inversion_pairs, sampling_pairs, upsample_for
from pipelines.unclip import Sampling, UnCLIP

COSINE = D.Schedule.make("squaredcos_cap_v2")
LINEAR = D.Schedule.make("linear")


def ints(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# ---- respacing -----------------------------------------------------------------------------


def test_respace_seven_steps_is_karlos_sr_schedule() -> None:
    assert D.respace(1000, 7) == [999, 832, 666, 500, 333, 166, 0]


@pytest.mark.parametrize("steps", [2, 7, 15, 25, 27, 50, 100, 1000])
def test_respace_shape(steps: int) -> None:
    ts = D.respace(1000, steps)
    assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))


@pytest.mark.parametrize("steps", [7, 25, 50])
def test_respace_matches_diffusers_unclip_scheduler(steps: int) -> None:
    """Karlo's presets (prior 25, decoder 25/50, SR 7) match diffusers' UnCLIPScheduler."""
    sched_mod = pytest.importorskip("diffusers.schedulers.scheduling_unclip")
    sched = sched_mod.UnCLIPScheduler(num_train_timesteps=1000)
    sched.set_timesteps(steps)
    assert D.respace(1000, steps) == sched.timesteps.tolist()


def test_respace_power_is_denser_near_zero() -> None:
    assert D.respace(1000, 5, 3.0) == [999, 421, 125, 16, 0]
    for power in (2.0, 3.0):
        ts, even = D.respace(1000, 8, power), D.respace(1000, 8)
        assert ts[0] == 999 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
        assert ts[-2] < even[-2] and ts[1] < even[1]  # every step but the first moved towards t = 0
    assert D.respace(1000, 8, 1.0) == D.respace(1000, 8)


def test_sampling_pairs_last_step_t() -> None:
    """`last_t` moves the final step's network evaluation up to last_t, never down."""
    assert sampling_pairs([999, 500, 0]) == [(999, 500), (500, 0), (0, -1)]
    assert sampling_pairs([999, 500, 0], last_t=25) == [(999, 500), (500, 0), (25, -1)]
    assert sampling_pairs([999, 500, 100], last_t=25) == [(999, 500), (500, 100), (100, -1)]


# ---- schedules ----------------------------------------------------------------------------


def _cos_f(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def test_cosine_schedule_closed_form() -> None:
    """abar_t = f((t + 1) / T) / f(0) (the product of betas telescopes) except at t = T - 1,
    where beta is capped at 0.999."""
    ac = COSINE.alphas_cumprod
    closed = torch.tensor([_cos_f((t + 1) / 1000) / _cos_f(0) for t in range(999)], dtype=torch.float64)
    assert torch.allclose(ac[:999], closed, rtol=1e-9, atol=1e-15)
    assert ac[999].item() == pytest.approx(ac[998].item() * 1e-3, rel=1e-12)
    assert ac[0].item() == pytest.approx(0.9999587158, abs=1e-10)
    assert ac[999].item() == pytest.approx(2.42877e-9, rel=1e-4)


def test_linear_schedule_endpoints() -> None:
    ac = LINEAR.alphas_cumprod
    assert ac[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)
    assert ac[999].item() == pytest.approx(4.03583e-5, rel=1e-5)


@pytest.mark.parametrize("schedule", [COSINE, LINEAR], ids=["cosine", "linear"])
def test_schedule_monotone(schedule: D.Schedule) -> None:
    ac = schedule.alphas_cumprod
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    assert bool((ac[1:] < ac[:-1]).all()) and 0 < ac[-1] < ac[0] < 1
    assert schedule.abar(ints(-1, 0)).tolist() == [1.0, ac[0].item()]
    assert schedule.abar(ints(999, -1, 5, -1)).tolist() == [ac[999].item(), 1.0, ac[5].item(), 1.0]
    with pytest.raises(IndexError):
        schedule.abar(ints(1000))


@pytest.mark.parametrize("name", ["squaredcos_cap_v2", "linear"])
def test_schedule_matches_diffusers(name: str) -> None:
    ddpm = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")
    ref = ddpm.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name).alphas_cumprod.double()
    assert torch.allclose(D.Schedule.make(name).alphas_cumprod, ref, atol=1e-6)  # diffusers keeps fp32


# ---- forward process and conversions -------------------------------------------------------


def test_q_sample_statistics() -> None:
    """Per row (own t): mean sqrt(abar) x0 and variance 1 - abar, within 5 standard errors."""
    n, x0 = 200_000, 0.7
    t = ints(0, 250, 500, 999)
    g = torch.Generator().manual_seed(0)
    x = D.q_sample(COSINE, torch.full((4, n), x0, dtype=torch.float64), t,
                   torch.randn(4, n, generator=g, dtype=torch.float64))
    a = COSINE.abar(t)
    se_mean, se_var = ((1 - a) / n).sqrt(), (1 - a) * math.sqrt(2 / n)
    assert ((x.mean(1) - a.sqrt() * x0).abs() < 5 * se_mean).all()
    assert ((x.var(1) - (1 - a)).abs() < 5 * se_var).all()


@pytest.fixture
def noised() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, eps, t, x_t) in fp64 with one timestep per sample, from t = 0 to t = 999."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    t = ints(0, 1, 500, 978, 999)
    return x0, eps, t, D.q_sample(COSINE, x0, t, eps)


def test_prediction_conversions_round_trip(noised) -> None:
    """eps, x0 and v predictions all give back (x0, eps) to 1e-9 in fp64 (the worst case is
    t = 999, where x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) divides by 4.9e-5)."""
    x0, eps, t, x_t = noised
    a = D._b(COSINE.abar(t), x0)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    for pred, kind in ((eps, "eps"), (x0, "x0"), (v, "v")):
        got_x0, got_eps = D.to_x0_eps(COSINE, x_t, t, pred, kind)
        assert torch.allclose(got_x0, x0, atol=1e-9) and torch.allclose(got_eps, eps, atol=1e-9), kind
    assert torch.allclose(D.x0_to_eps(COSINE, x_t, t, D.eps_to_x0(COSINE, x_t, t, eps)), eps, atol=1e-9)


def test_clamped_x0_keeps_x_t_consistent(noised) -> None:
    x0, eps, t, x_t = noised
    cx0, ceps = D.to_x0_eps(COSINE, x_t, t, eps, "eps", clip_x0=1.0)
    assert cx0.abs().max() <= 1.0
    a = D._b(COSINE.abar(t), x0)
    assert torch.allclose(a.sqrt() * cx0 + (1 - a).sqrt() * ceps, x_t, atol=1e-12)


# ---- posterior ----------------------------------------------------------------------------


def test_posterior_consecutive_steps_closed_form(noised) -> None:
    """DDPM eq. 7 on the full chain: mean = sqrt(abar') beta / (1 - abar) x0
    + sqrt(alpha) (1 - abar') / (1 - abar) x_t, var = (1 - abar') / (1 - abar) beta."""
    x0, _, t, x_t = noised
    t = t.clamp(min=1)
    betas = D.make_betas("squaredcos_cap_v2", 1000)[t]
    a, ap = COSINE.abar(t), COSINE.abar(t - 1)
    mean, var, beta = D.posterior(COSINE, x0, x_t, t, t - 1)
    want = D._b(ap.sqrt() * betas / (1 - a), x0) * x0 + D._b((1 - betas).sqrt() * (1 - ap) / (1 - a), x0) * x_t
    assert torch.allclose(beta, betas, rtol=1e-9)
    assert torch.allclose(mean, want, atol=1e-10)
    assert torch.allclose(var, (1 - ap) / (1 - a) * betas, rtol=1e-9)


def test_posterior_respaced_is_gaussian_conditioning(noised) -> None:
    """On a respaced pair (t, s), q(x_s | x_t, x0) from conditioning the joint Gaussian
    x_s = sqrt(a_s) x0 + sqrt(1 - a_s) e1, x_t = sqrt(a_t / a_s) x_s + sqrt(1 - a_t / a_s) e2;
    s = -1 (the clean sample) gives mean x0 and variance 0."""
    x0, _, _, _ = noised
    t, s = ints(999, 832, 500, 166, 0), ints(832, 500, 333, 0, -1)
    x_t = D.q_sample(COSINE, x0, t, torch.randn_like(x0))
    a_t, a_s = COSINE.abar(t), COSINE.abar(s)
    cov = (a_t / a_s).sqrt() * (1 - a_s)
    want_mean = D._b(a_s.sqrt(), x0) * x0 + D._b(cov / (1 - a_t), x0) * (x_t - D._b(a_t.sqrt(), x0) * x0)
    mean, var, _ = D.posterior(COSINE, x0, x_t, t, s)
    assert torch.allclose(mean, want_mean, atol=1e-10)
    assert torch.allclose(var, (1 - a_s) - cov**2 / (1 - a_t), atol=1e-12)
    assert torch.equal(mean[-1], x0[-1]) and var[-1] == 0


def test_ddpm_std_variants(noised) -> None:
    x0, _, _, x_t = noised
    t, s = ints(999, 832, 500, 166, 1), ints(832, 500, 333, 0, 0)
    _, var, beta = D.posterior(COSINE, x0, x_t, t, s)
    small = D.ddpm_std(var, beta, "fixed_small", None, x_t)
    assert torch.allclose(small.flatten(), var.sqrt())
    assert torch.allclose(D.ddpm_std(var, beta, "fixed_large", None, x_t).flatten(), beta.sqrt())
    ones = torch.ones_like(x_t)
    assert torch.allclose(D.ddpm_std(var, beta, "learned_range", ones, x_t), D._b(beta.sqrt(), x_t).expand_as(x_t))
    assert torch.allclose(D.ddpm_std(var, beta, "learned_range", -ones, x_t), small.expand_as(x_t))


# ---- DDIM and its inversion ----------------------------------------------------------------

SIGMA = 0.5  # data ~ N(0, SIGMA^2 I)


def optimal_eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[eps | x_t] for Gaussian data: sqrt(1 - abar) x_t / (abar SIGMA^2 + 1 - abar)."""
    a = D._b(COSINE.abar(t), x_t)
    return (1 - a).sqrt() * x_t / (a * SIGMA**2 + 1 - a)


def ddim_round_trip(steps: int, x0: torch.Tensor) -> torch.Tensor:
    """Invert x0 (taken as x at t = 0) up to t = 999 with DDIM, then sample back with
    DDIM eta = 0 on the same respaced timesteps; returns the reconstruction."""
    ts = D.respace(1000, steps)
    b = x0.shape[0]
    x = x0
    for t, t_next in inversion_pairs(ts):
        t = torch.full((b,), t)
        x0_hat, eps = D.to_x0_eps(COSINE, x, t, optimal_eps(x, t), "eps")
        x = D.ddim_invert_step(COSINE, x0_hat, eps, torch.full((b,), t_next))
    for t, t_prev in sampling_pairs(ts):
        t = torch.full((b,), t)
        x0_hat, eps = D.to_x0_eps(COSINE, x, t, optimal_eps(x, t), "eps")
        x = D.ddim_step(COSINE, x0_hat, eps, t, torch.full((b,), t_prev), torch.zeros(b))
    return x


def test_ddim_inversion_round_trip_converges() -> None:
    """With the exact denoiser of Gaussian data the only error is the DDIM discretisation
    (eps is taken at the start of each step both ways), first order in the step count:
    relative error <= 3.5 / steps (measured 0.29 at 10 steps, 0.061 at 50, 0.0124 at 250)."""
    x0 = SIGMA * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errors = {}
    for steps in (10, 50, 250):
        rec = ddim_round_trip(steps, x0)
        errors[steps] = ((rec - x0).norm() / x0.norm()).item()
        assert errors[steps] <= 3.5 / steps, errors
    assert errors[10] > 4 * errors[50] > 16 * errors[250], errors


def test_ddim_eta_zero_adds_no_noise(noised) -> None:
    x0, eps, _, _ = noised
    t, s = ints(999, 500, 500, 10, 0), ints(832, 333, 0, -1, -1)
    noise = torch.randn_like(x0)
    zero = torch.zeros(5, dtype=torch.float64)
    assert torch.equal(D.ddim_step(COSINE, x0, eps, t, s, zero, noise), D.ddim_step(COSINE, x0, eps, t, s, zero))
    # eta = 1 is DDPM's posterior (fixed_small): same mean, same standard deviation
    ones = torch.ones(5, dtype=torch.float64)
    x_t = D.q_sample(COSINE, x0, t, eps)
    mean, var, _ = D.posterior(COSINE, x0, x_t, t, s)
    ddim1 = D.ddim_step(COSINE, x0, eps, t, s, ones, noise)
    assert torch.allclose(ddim1, mean + D._b(var.sqrt(), x0) * noise, atol=1e-10)


# ---- guidance and per-sample timesteps ----------------------------------------------------


def test_guidance_per_sample() -> None:
    g = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    assert torch.allclose(D.guide(cond, uncond, torch.ones(3)), cond, atol=1e-6)
    assert torch.equal(D.guide(cond, uncond, torch.zeros(3)), uncond)
    mixed = D.guide(cond, uncond, torch.tensor([1.0, 0.0, 4.0]))
    assert torch.allclose(mixed[0], cond[0], atol=1e-6) and torch.equal(mixed[1], uncond[1])
    assert torch.allclose(mixed[2], uncond[2] + 4 * (cond[2] - uncond[2]))


def assert_per_sample(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> None:
    """fn over a batch (every argument batched on dim 0) equals fn on each sample alone."""
    batched = fn(*args)
    alone = torch.cat([fn(*(a[i:i + 1] for a in args)) for i in range(args[0].shape[0])])
    assert torch.allclose(batched, alone, atol=1e-12, rtol=0)


STEP_FUNCTIONS = {
    "q_sample": lambda x0, eps, x_t, t, s, eta, v: D.q_sample(COSINE, x0, t, eps),
    "to_x0": lambda x0, eps, x_t, t, s, eta, v: D.to_x0_eps(COSINE, x_t, t, eps, "eps", 1.0)[0],
    "posterior": lambda x0, eps, x_t, t, s, eta, v: D.posterior(COSINE, x0, x_t, t, s)[0],
    "ddpm_small": lambda x0, eps, x_t, t, s, eta, v: D.ddpm_step(COSINE, x_t, x0, t, s, eps),
    "ddpm_learned": lambda x0, eps, x_t, t, s, eta, v: D.ddpm_step(COSINE, x_t, x0, t, s, eps, "learned_range", v),
    "ddim": lambda x0, eps, x_t, t, s, eta, v: D.ddim_step(COSINE, x0, eps, t, s, eta, v),
    "invert": lambda x0, eps, x_t, t, s, eta, v: D.ddim_invert_step(COSINE, x0, eps, t),
    "guide": lambda x0, eps, x_t, t, s, eta, v: D.guide(x0, eps, eta * 4),
}


@pytest.mark.parametrize("name", list(STEP_FUNCTIONS))
def test_batched_step_equals_steps_one_by_one(noised, name: str) -> None:
    """Samples at different timesteps (and etas, guidance scales) in one call."""
    x0, eps, t, x_t = noised
    s = ints(-1, 0, 333, 832, 978)
    eta = torch.tensor([0.0, 1.0, 0.5, 0.2, 0.0], dtype=torch.float64)
    v = torch.rand_like(x0) * 2 - 1
    assert_per_sample(STEP_FUNCTIONS[name], x0, eps, x_t, t, s, eta, v)


# ---- batched Stage.step over mixed tracks ---------------------------------------------------


@pytest.fixture(scope="module", params=[False, True], ids=["contiguous", "channels_last"])
def pipe(request: pytest.FixtureRequest) -> UnCLIP:
    """The tiny stack, its UNets in NCHW or in channels-last (as the server runs them)."""
    return UnCLIP(random_stack(StackConfig.tiny(), seed=4).use_channels_last(request.param))


# (sampler, eta, guidance, index of the pair to run): different t, samplers and guidance.
TRACK_SPECS = [("ddpm", 0.0, 3.0, 0), ("ddim", 0.0, 1.0, 3), ("ddim", 0.8, 5.0, 7), ("invert", 0.0, 2.0, 2),
               ("ddpm", 0.0, 1.0, 7), ("invert", 0.0, 1.0, 0)]


def make_tracks(pipe: UnCLIP, stage: str) -> list[Track]:
    """Fresh, deterministic tracks of one stage following TRACK_SPECS (own seeds, conditioning)."""
    text = pipe.encode_text(["a red square", "two blue circles", ""])
    cfg = pipe.cfg
    ts = D.respace(1000, 8)
    tracks = []
    for i, (sampler, eta, guidance, index) in enumerate(TRACK_SPECS):
        g = torch.Generator().manual_seed(100 + i)
        r = slice(i % 3, i % 3 + 1)
        cond = {"text_emb": text.pooled[r], "text_enc": text.states[r], "mask": text.mask[r]}
        if stage == "prior":
            shape = (1, cfg.prior.model.clip_dim)
        elif stage == "decoder":
            size = cfg.decoder.model.image_size
            shape, cond["image_emb"] = (1, 3, size, size), torch.randn(1, cfg.prior.model.clip_dim, generator=g)
        else:
            size = cfg.upsamplers[0].out_size
            shape, cond = (1, 3, size, size), {"low_res": torch.rand(1, 3, size, size, generator=g) * 2 - 1}
        pairs = inversion_pairs(ts) if sampler == "invert" else sampling_pairs(ts)
        x = torch.randn(shape, generator=g)
        tracks.append(Track(x, pairs, sampler, eta, guidance, g, cond, index=min(index, len(pairs) - 1)))
    return tracks


@pytest.mark.parametrize("stage", ["prior", "decoder", "upsampler.0"])
def test_stage_step_batched_equals_alone(pipe: UnCLIP, stage: str) -> None:
    """One batched step over mixed tracks (ddpm / ddim eta 0 and 0.8 / invert, guidance
    1-5, t from 999 to the last step, upsampler rows on both networks) equals each track
    stepped alone, to 1e-5."""
    batched, alone = make_tracks(pipe, stage), make_tracks(pipe, stage)
    assert len({tr.t for tr in batched}) >= 4
    pipe.stages[stage].step(batched)
    for tr in alone:
        pipe.stages[stage].step([tr])
    for a, b in zip(batched, alone):
        assert a.index == b.index
        scale = max(1.0, b.x.abs().max().item())  # random-weight priors reach |x| ~ 100
        assert (a.x - b.x).abs().max().item() <= 1e-5 * scale, (a.sampler, b.x.abs().max())


@pytest.mark.parametrize("stage", ["decoder", "upsampler.0"])
def test_unets_hand_the_sampler_contiguous_fp32(pipe: UnCLIP, stage: str) -> None:
    """Whatever the UNets' memory format, their output is contiguous fp32 and the latents
    the sampler writes back stay contiguous (mixed-format elementwise math is the slow path)."""
    tracks = make_tracks(pipe, stage)[:3]
    stage_ = pipe.stages[stage]
    x = torch.cat([tr.x for tr in tracks])
    t = torch.tensor([tr.model_t for tr in tracks])
    pred, var = stage_.predict(x, t, tracks)
    for out in (pred,) if var is None else (pred, var):
        assert out.dtype == torch.float32
        assert out[0].is_contiguous()  # each row NCHW (the prediction's channels of [B, 2C, ...])
    unet = pipe.stack.decoder if stage == "decoder" else pipe.stack.upsamplers[0].model
    cond = tracks[0].cond
    raw = (unet(x[:1], t[:1], cond["image_emb"], cond["text_emb"], cond["text_enc"], cond["mask"])
           if stage == "decoder" else unet(x[:1], t[:1], low_res=cond["low_res"]))
    assert raw.dtype == torch.float32 and raw.is_contiguous()
    stage_.step(tracks)
    assert all(tr.x.is_contiguous() for tr in tracks)


def test_upsampler_start_t_starts_from_the_noised_condition(pipe: UnCLIP) -> None:
    """start_t > 0 (SDEdit): the upsampler's tracks start at start_t from the low-res
    condition noised to it; 0 starts at the top from pure noise."""
    stage = pipe.stages["upsampler.0"]
    size = stage.up.cfg.out_size
    low_size = pipe.cfg.decoder.model.image_size
    images = torch.rand(2, 3, low_size, low_size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    plain = stage.cfg
    try:
        for start_t, steps in ((0, 3), (10, 2)):
            stage.cfg = replace(plain, start_t=start_t, steps=steps)
            gens = [torch.Generator().manual_seed(i) for i in range(2)]
            request = next(pipe.upsample(images, gens, Sampling(), 1))
            tracks, low = request.tracks, upsample_for(images, size)
            x = torch.cat([tr.x for tr in tracks])
            assert tracks[0].pairs[0][0] == (start_t or 999) and len(tracks[0].pairs) == steps
            close = (x - low).abs().mean().item()
            assert close < 0.1 if start_t else close > 0.5, (start_t, close)
    finally:
        stage.cfg = plain


def test_stage_guidance_one_is_the_conditional_output(pipe: UnCLIP) -> None:
    """A track with guidance 1 gets the plain conditional prediction (no unconditional pass)."""
    tracks = [tr for tr in make_tracks(pipe, "decoder") if tr.guidance == 1.0]
    stage = pipe.stages["decoder"]
    x = torch.cat([tr.x for tr in tracks])
    t = torch.tensor([tr.t for tr in tracks])
    pred, var = stage.predict(x, t, tracks)
    c = {k: torch.cat([tr.cond[k] for tr in tracks]) for k in tracks[0].cond}
    raw = pipe.stack.decoder(x, t, c["image_emb"], c["text_emb"], c["text_enc"], c["mask"])
    assert torch.allclose(torch.cat([pred, var], dim=1), raw, atol=1e-6)
