"""Parity with diffusers' UnCLIPPipeline (the reference implementation of Karlo's sampling).

(a) the key-layout rules of pipelines/diffusers_layout.py against diffusers' Karlo key map;
(b) exact round trips of weights and configs between the two layouts;
(c) with small random weights of Karlo's architecture in both implementations, identical
    text encodings and identical noise: each network's forward, each sampler step, then the
    whole generation (prior embeddings, decoder images, upsampled images) agree within 1e-4
    in fp32. The reference's UnCLIPSchedulers get float64 noise tables, as Karlo and we
    compute them: with diffusers' stock float32 tables its own steps are off by up to ~7e-4
    (t = 0) and ~2.5e-4 (t = 999), which these random networks amplify (stage outputs then
    differ by ~2e-3 / 0.2 / 1.3).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from pipelines import diffusion as D  # noqa: E402
from pipelines.checkpoints import build_on_meta  # noqa: E402
from pipelines.config import StackConfig  # noqa: E402
from pipelines.diffusers_layout import (  # noqa: E402
    diffusers_model_configs,
    diffusers_to_ours,
    key_maps,
    load_diffusers_dir,
    ours_to_diffusers,
    stack_config_from_diffusers,
    stack_state_dicts,
)
from pipelines.diffusion import respace  # noqa: E402
from pipelines.operations import generate  # noqa: E402
from pipelines.sampling import sampling_pairs  # noqa: E402
from pipelines.stack import UnCLIPStack  # noqa: E402
from pipelines.unclip import Sampling, UnCLIP, make_generator, run_direct  # noqa: E402
from tests.pipelines._diffusers_ref import (  # noqa: E402
    Latents,
    build_models,
    build_pipeline,
    build_schedulers,
    parity_config,
    random_parity_stack,
    run_reference,
    use_float64_tables,
)

KEY_MAP = Path(__file__).parents[2] / "tests" / "data" / "karlo" / "diffusers_key_map.tsv"
# Karlo checkpoint prefix -> (our group, our key prefix)
KARLO_PREFIXES = {
    "model_first_steps.": ("upsamplers.0", "model."), "model_last_step.": ("upsamplers.0", "last_step_model."),
}
TOL = 1e-4
STEPS = (6, 8, 4)  # prior, decoder, upsampler: respaced identically by Karlo and diffusers
GUIDANCE = (4.0, 3.0)
PROMPT = "a red square above a blue circle"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# ---- (a) rules vs diffusers' Karlo key map ---------------------------------------------------


def read_key_map() -> list[list[str]]:
    """Rows: component, diffusers key, shape `AxB`, Karlo source."""
    return [r.split("\t") for r in KEY_MAP.read_text().splitlines()[1:] if r.strip()]


@pytest.fixture(scope="module")
def karlo_meta_state() -> dict[str, dict[str, torch.Tensor]]:
    """Our Karlo-sized groups on the meta device (no memory)."""
    return stack_state_dicts(build_on_meta(StackConfig.karlo()))


def test_rules_give_the_karlo_key_map(karlo_meta_state: dict) -> None:
    """Converting every Karlo-sized tensor of ours gives exactly the diffusers keys and shapes."""
    want = {(r[0], r[1]): tuple(int(x) for x in r[2].split("x")) for r in read_key_map()}
    converted = ours_to_diffusers(karlo_meta_state, StackConfig.karlo())
    got = {(comp, k): tuple(v.shape) for comp, sd in converted.items() for k, v in sd.items()}
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: s for k, s in got.items() if want[k] != s} == {}


def karlo_source(row: list[str]) -> tuple[str, str, int, int]:
    """A key map row's Karlo source -> (our group, our key, part index, parts)."""
    src = row[3]
    if src.startswith("ViT-L-14_stats"):
        return "clip_stats", row[1].removeprefix("clip_"), 0, 1
    key = src.split(" ")[0]
    chunk = re.search(r"chunk (\w) of (\d)", src)
    part, parts = ("qkv".index(chunk.group(1)) if int(chunk.group(2)) == 3 else "kv".index(chunk.group(1)),
                   int(chunk.group(2))) if chunk else (0, 1)
    for prefix, (group, ours) in KARLO_PREFIXES.items():
        if key.startswith(prefix):
            return group, ours + key[len(prefix):], part, parts
    group = "prior" if row[0] == "prior" else "decoder"
    return group, key.removeprefix("model."), part, parts


def test_rules_name_the_karlo_source() -> None:
    """Each diffusers key comes from the Karlo tensor (and per-head chunk) the key map names."""
    ours = {}
    for m in key_maps(StackConfig.karlo()):
        for i, k in enumerate(m.target.keys):
            ours[(m.target.component, k)] = (m.group, m.key, i, m.parts)
    wrong = [(r[0], r[1]) for r in read_key_map() if ours[(r[0], r[1])] != karlo_source(r)]
    assert wrong == []


# ---- (b) round trips ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> UnCLIPStack:
    return random_parity_stack(parity_config(), seed=0)


@pytest.fixture(scope="module")
def pipe(stack: UnCLIPStack) -> UnCLIP:
    return UnCLIP(stack)


def test_weights_round_trip_exactly(stack: UnCLIPStack) -> None:
    """ours -> diffusers -> ours is the identity, and per-head splits really move rows."""
    groups = stack_state_dicts(stack)
    theirs = ours_to_diffusers(groups, stack.cfg)
    back = diffusers_to_ours(theirs, stack.cfg)
    assert back.keys() == groups.keys()
    for g, sd in groups.items():
        assert back[g].keys() == sd.keys()
        assert all(torch.equal(back[g][k], v) for k, v in sd.items()), g
    qkv = groups["prior"]["transformer.resblocks.0.attn.c_qkv.weight"]
    d = stack.cfg.prior.model.width // stack.cfg.prior.model.heads
    assert torch.equal(theirs["prior"]["transformer_blocks.0.attn1.to_k.weight"][:d], qkv[d:2 * d])


def test_missing_diffusers_key_is_reported(stack: UnCLIPStack) -> None:
    theirs = ours_to_diffusers(stack_state_dicts(stack), stack.cfg)
    del theirs["text_proj"]["embedding_proj.weight"]
    with pytest.raises(ValueError, match="1 missing"):
        diffusers_to_ours(theirs, stack.cfg)


@pytest.mark.parametrize("name", ["tiny", "karlo"])
def test_config_round_trip(name: str) -> None:
    """Our model configs -> diffusers component configs -> our model configs."""
    cfg = parity_config() if name == "tiny" else StackConfig.karlo()
    back = stack_config_from_diffusers(diffusers_model_configs(cfg), clip=cfg.clip)
    assert back.prior.model == cfg.prior.model
    assert back.decoder.model == cfg.decoder.model
    assert back.upsamplers[0].model == cfg.upsamplers[0].model


def test_load_diffusers_dir(stack: UnCLIPStack, tmp_path: Path) -> None:
    """save_pretrained of the diffusers models -> load_diffusers_dir -> the same weights."""
    for name, model in build_models(stack).items():
        model.save_pretrained(tmp_path / name)
    loaded = load_diffusers_dir(tmp_path, allow_random_clip=True, clip=stack.cfg.clip)
    assert loaded.cfg.decoder.model == stack.cfg.decoder.model
    want, got = stack_state_dicts(stack), stack_state_dicts(loaded)
    assert all(torch.equal(got[g][k], v) for g, sd in want.items() for k, v in sd.items())
    with pytest.raises(FileNotFoundError, match="clip_weights"):
        load_diffusers_dir(tmp_path)


def test_karlo_respacing_matches_diffusers_for_the_presets() -> None:
    """Karlo's respacing (ours) and diffusers' agree for Karlo's presets and STEPS; they
    differ for some other counts (e.g. 21, 23, 31), where parity is not expected."""
    def theirs(n: int) -> list[int]:
        return (np.arange(n) * (999 / (n - 1))).round()[::-1].astype(np.int64).tolist()

    for n in (25, 50, 7) + STEPS:
        assert respace(1000, n) == theirs(n), n
    assert respace(1000, 21) != theirs(21)


# ---- (c) numerical parity -------------------------------------------------------------------


def test_noise_tables_match_diffusers(stack: UnCLIPStack) -> None:
    """Our fp64 alphas_cumprod equals diffusers' fp32 table up to fp32 rounding."""
    theirs = build_schedulers(stack.cfg)["decoder_scheduler"].alphas_cumprod.double()
    assert (theirs - stack.decoder_schedule.alphas_cumprod).abs().max() < 1e-6


def test_diffusers_fp32_tables_lose_the_last_step() -> None:
    """Why the reference gets float64 tables: in fp32, 1 - alphas_cumprod[0] (diffusers'
    beta_prod_t at t = 0) is off by ~1e-3 relative to betas[0], so its last step scales x0
    by 1 + 1e-3 (ours and Karlo's compute the coefficients in float64)."""
    sched = build_schedulers(parity_config())["decoder_scheduler"]
    coeff = (sched.betas[0] / (1 - sched.alphas_cumprod[0])).item()
    assert abs(coeff - 1) > 1e-4


STAGE_SCHEDULERS = {"prior": "prior_scheduler", "decoder": "decoder_scheduler", "upsampler.0": "super_res_scheduler"}


@pytest.mark.parametrize("stage", list(STAGE_SCHEDULERS))
def test_step_matches_unclip_scheduler(pipe: UnCLIP, stage: str) -> None:
    """Teacher-forced: each ancestral step of ours == UnCLIPScheduler.step (float64 tables)
    for the same x_t, model output and noise generator, over a whole respaced chain."""
    st = pipe.stages[stage]
    sched = build_schedulers(pipe.cfg)[STAGE_SCHEDULERS[stage]]
    use_float64_tables(sched, st.schedule.alphas_cumprod)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 8, 8, generator=gen)
    out_ch = 6 if st.cfg.variance == "learned_range" else 3
    for i, (t, t_to) in enumerate(sampling_pairs(st.timesteps(STEPS[1]))):
        out = torch.randn(1, out_ch, 8, 8, generator=gen).clamp(-1, 1)
        theirs = sched.step(out, torch.tensor(t), x, prev_timestep=None if t_to < 0 else torch.tensor(t_to),
                            generator=torch.Generator().manual_seed(i)).prev_sample
        pred, var = D.split_output(out, 3)
        tt, tto = torch.tensor([t]), torch.tensor([t_to])
        x0, _ = D.to_x0_eps(st.schedule, x, tt, pred, st.cfg.prediction, st.cfg.clip_x0)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        ours = D.ddpm_step(st.schedule, x, x0, tt, tto, noise, st.cfg.variance, var)
        assert max_diff(ours, theirs) <= 1e-5, (t, t_to)
        x = ours


@pytest.fixture(scope="module")
def models(stack: UnCLIPStack) -> dict:
    return build_models(stack)


def test_prior_forward(pipe: UnCLIP, models: dict) -> None:
    """Prior on a batch of [prompt; ""] at two timesteps (mask: text padding + causal)."""
    text = pipe.encode_text([PROMPT, ""])
    x = torch.randn(2, pipe.cfg.prior.model.clip_dim, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 321])
    ours = pipe.stack.prior(x, t, text.pooled, text.states, text.mask)
    theirs = models["prior"](x, t, proj_embedding=text.pooled, encoder_hidden_states=text.states,
                             attention_mask=text.mask).predicted_image_embedding
    assert max_diff(ours, theirs) <= 1e-5


def test_decoder_forward(pipe: UnCLIP, models: dict) -> None:
    """Decoder (+ text_proj) with CLIP tokens, text tokens and the padding mask."""
    text = pipe.encode_text([PROMPT])
    gen = torch.Generator().manual_seed(2)
    size = pipe.cfg.decoder.model.image_size
    x, z = torch.randn(1, 3, size, size, generator=gen), torch.randn(1, pipe.cfg.prior.model.clip_dim, generator=gen)
    t = torch.tensor([500])
    ours = pipe.stack.decoder(x, t, z, text.pooled, text.states, text.mask)
    tokens, add_emb = models["text_proj"](image_embeddings=z, prompt_embeds=text.pooled,
                                          text_encoder_hidden_states=text.states, do_classifier_free_guidance=False)
    mask = torch.nn.functional.pad(text.mask, (pipe.cfg.decoder.model.clip_tokens, 0), value=True)
    theirs = models["decoder"](x, t, encoder_hidden_states=tokens, class_labels=add_emb, attention_mask=mask).sample
    assert max_diff(ours, theirs) <= 1e-5


@pytest.mark.parametrize("which", ["model", "last_step_model"])
def test_upsampler_forward(pipe: UnCLIP, models: dict, which: str) -> None:
    up = pipe.stack.upsamplers[0]
    size = up.cfg.out_size
    gen = torch.Generator().manual_seed(3)
    x, low = torch.randn(1, 3, size, size, generator=gen), torch.randn(1, 3, size, size, generator=gen)
    t = torch.tensor([666 if which == "model" else 0])
    ours = getattr(up, which)(x, t, low_res=low)
    net = models["super_res_first" if which == "model" else "super_res_last"]
    assert max_diff(ours, net(torch.cat([x, low], dim=1), t).sample) <= 1e-5


def staged(pipe: UnCLIP, seed: int, opts: Sampling):
    """generate()'s building blocks, keeping every stage's output."""
    text = pipe.encode_text([PROMPT])
    gens = [make_generator(seed)]
    z = yield from pipe.sample_prior(text, [seed], gens, opts)
    small = yield from pipe.decode(z, text, gens, opts)
    big = yield from pipe.upsample(small, gens, opts, 1)
    return {"image_emb": z, "decoder": small, "images": big}


@pytest.fixture(scope="module")
def generations(stack: UnCLIPStack, pipe: UnCLIP) -> dict:
    """Both implementations, same weights, text encodings, initial noise and seed."""
    seed = 7
    latents = Latents.draw(stack.cfg, 1, seed=123)
    opts = Sampling(prior_steps=STEPS[0], decoder_steps=STEPS[1], upsampler_steps=STEPS[2],
                    prior_guidance=GUIDANCE[0], decoder_guidance=GUIDANCE[1], best_of=1, latents=latents.ours())
    ours = run_direct(pipe, staged(pipe, seed, opts))
    end_to_end = run_direct(pipe, generate(pipe, PROMPT, n=1, seed=seed, opts=opts))
    ref = build_pipeline(stack, record=True, float64_tables=True)
    theirs = run_reference(ref, pipe.encode_text([PROMPT]), latents, seed, STEPS, GUIDANCE)
    return {"ours": ours, "generate": end_to_end, "theirs": theirs}


@pytest.mark.parametrize("stage", ["image_emb", "decoder", "images"])
def test_generation_matches_diffusers(generations: dict, stage: str) -> None:
    ours, theirs = generations["ours"][stage], generations["theirs"][stage]
    diff = max_diff(ours, theirs)
    print(f"{stage}: max |ours - diffusers| = {diff:.3g}")
    assert ours.abs().max() > 0.05  # a real signal, not all zeros
    assert diff <= TOL


@pytest.mark.parametrize("stage", ["image_emb", "decoder", "images"])
def test_generation_in_channels_last_matches_diffusers(stack: UnCLIPStack, generations: dict, stage: str) -> None:
    """The server runs the UNets in channels-last (UnCLIPStack.use_channels_last): the
    same staged run in that format stays within the parity tolerance."""
    seed, latents = 7, Latents.draw(stack.cfg, 1, seed=123)
    opts = Sampling(prior_steps=STEPS[0], decoder_steps=STEPS[1], upsampler_steps=STEPS[2],
                    prior_guidance=GUIDANCE[0], decoder_guidance=GUIDANCE[1], best_of=1, latents=latents.ours())
    fast = UnCLIP(copy.deepcopy(stack).use_channels_last())
    assert fast.stack.decoder.out[-1].weight.is_contiguous(memory_format=torch.channels_last)
    ours = run_direct(fast, staged(fast, seed, opts))[stage]
    assert max_diff(ours, generations["theirs"][stage]) <= TOL


def test_generate_is_the_staged_run(generations: dict) -> None:
    """generate() runs exactly the stages compared above."""
    result = generations["generate"]
    assert torch.equal(result.images, generations["ours"]["images"])
    assert torch.equal(result.embeddings, generations["ours"]["image_emb"])
