"""Kandinsky 2.2 on diffusers' networks with our stages, against diffusers' own pipelines.

A tiny random model folder (tests/pipelines/_kandinsky_tiny.py) is loaded by
`Kandinsky.load` and, as the reference, by KandinskyV22PriorPipeline / KandinskyV22Pipeline
`from_pretrained`. With the same initial noise and seed, each stage (prior embeddings,
decoder latents, MoVQ images) and the whole generation agree within 1e-4 in fp32. The
reference's schedulers get float64 noise tables, as ours are (see _diffusers_ref's
`use_float64_tables`); the stock float32 tables' difference is printed, not asserted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from pipelines.diffusion import spaced  # noqa: E402
from pipelines.errors import InvalidInput  # noqa: E402
from pipelines.kandinsky.layout import LayoutError, find_layout, is_kandinsky_dir  # noqa: E402
from pipelines.kandinsky.pipeline import Kandinsky  # noqa: E402
from pipelines.operations import generate  # noqa: E402
from pipelines.unclip import Sampling, make_generator, run_direct, run_many  # noqa: E402
from tests.pipelines._diffusers_ref import use_float64_tables  # noqa: E402
from tests.pipelines._kandinsky_real import REAL_TEXT, params_millions, real_nets  # noqa: E402
from tests.pipelines._kandinsky_tiny import IMAGE, write_model_dir  # noqa: E402

TOL = 1e-4
STEPS = (6, 8)  # prior, decoder
GUIDANCE = (4.0, 4.0)
PROMPT = "a red cat"
SEED = 5


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("kandinsky"))


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> Kandinsky:
    return Kandinsky.load(model_dir)


def reference(model_dir: Path, pipe: Kandinsky, float64_tables: bool = True) -> tuple:
    """diffusers' prior and decoder pipelines over the same folder (fp32, CPU); float64_tables:
    their schedulers get our float64 noise tables."""
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    prior = KandinskyV22PriorPipeline.from_pretrained(model_dir / "prior", local_files_only=True)
    decoder = KandinskyV22Pipeline.from_pretrained(model_dir / "decoder", local_files_only=True)
    for p in (prior, decoder):
        p.set_progress_bar_config(disable=True)
    if float64_tables:
        use_float64_tables(prior.scheduler, pipe.nets.prior_schedule.alphas_cumprod)
        use_float64_tables(decoder.scheduler, pipe.nets.decoder_schedule.alphas_cumprod)
    return prior, decoder


def fixed_noise(pipe: Kandinsky, n: int = 1) -> dict[str, torch.Tensor]:
    """Initial noise of both stages: prior [n, D], decoder latents [n, C, h, h]."""
    gen = torch.Generator().manual_seed(123)
    side = IMAGE // pipe.nets.movq_scale
    return {"prior": torch.randn(n, pipe.prior_dim, generator=gen),
            "decoder": torch.randn(n, pipe.nets.latent_channels, side, side, generator=gen)}


def options(latents: dict) -> Sampling:
    return Sampling(prior_steps=STEPS[0], decoder_steps=STEPS[1], prior_guidance=GUIDANCE[0],
                    decoder_guidance=GUIDANCE[1], best_of=1, latents=latents)


def run_reference(ref: tuple, latents: dict, seed: int = SEED) -> dict[str, torch.Tensor]:
    """diffusers' prior then decoder, one generator through both (generate() uses one per image)."""
    prior, decoder = ref
    gen = torch.Generator().manual_seed(seed)
    out = prior(PROMPT, num_inference_steps=STEPS[0], guidance_scale=GUIDANCE[0], generator=gen,
                latents=latents["prior"], output_type="pt")
    state = gen.get_state()
    kw = dict(image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds, height=IMAGE,
              width=IMAGE, num_inference_steps=STEPS[1], guidance_scale=GUIDANCE[1], latents=latents["decoder"])
    lat = decoder(**kw, generator=gen, output_type="latent").images
    gen.set_state(state)
    images = decoder(**kw, generator=gen, output_type="pt").images
    return {"image_emb": out.image_embeds, "zero_emb": out.negative_image_embeds, "latents": lat,
            "images": images.clamp(-1, 1)}


def staged(pipe: Kandinsky, latents: dict, seed: int = SEED):
    """generate()'s stages, keeping each one's output."""
    opts, gens = options(latents), [make_generator(seed)]
    z = yield from pipe.sample_prior(pipe.encode_text([PROMPT]), [seed], gens, opts)
    lat = yield from pipe.decode_latents(z, gens, opts, (IMAGE, IMAGE))
    images = yield from pipe.to_pixels(lat)
    return {"image_emb": z, "latents": lat, "images": images}


@pytest.fixture(scope="module")
def generations(model_dir: Path, pipe: Kandinsky) -> dict:
    """Ours (staged and generate()) and diffusers', same weights, initial noise and seed."""
    latents = fixed_noise(pipe)
    return {"ours": run_direct(pipe, staged(pipe, latents)),
            "generate": run_direct(pipe, generate(pipe, PROMPT, n=1, seed=SEED, opts=options(latents))),
            "theirs": run_reference(reference(model_dir, pipe), latents),
            "stock": run_reference(reference(model_dir, pipe, float64_tables=False), latents)}


@pytest.mark.parametrize("stage", ["image_emb", "latents", "images"])
def test_each_stage_matches_diffusers(pipe: Kandinsky, generations: dict, stage: str) -> None:
    """Prior embeddings, then decoder latents, then MoVQ images from diffusers' latents."""
    ours, theirs = generations["ours"][stage], generations["theirs"][stage]
    if stage == "images":  # the stage alone: MoVQ amplifies the latents' fp32 rounding (~1e-5) 30x
        ours = run_direct(pipe, pipe.to_pixels(generations["theirs"]["latents"]))
    diff = max_diff(ours, theirs)
    stock = max_diff(ours, generations["stock"][stage])
    print(f"{stage}: max |ours - diffusers| = {diff:.3g} (diffusers with float32 tables: {stock:.3g})")
    assert ours.abs().max() > 0.05  # a real signal, not all zeros
    assert diff <= TOL


def test_generation_matches_diffusers(generations: dict) -> None:
    """The whole generation: images within 1/255 (the stages' differences, amplified by MoVQ)."""
    diff = max_diff(generations["ours"]["images"], generations["theirs"]["images"])
    print(f"end to end images: max |ours - diffusers| = {diff:.3g}")
    assert diff <= 1 / 255


def test_zero_image_embedding_is_diffusers_negative(pipe: Kandinsky, generations: dict) -> None:
    """The decoder's unconditional rows use the prior pipeline's negative image embedding."""
    assert max_diff(pipe.zero_image_emb, generations["theirs"]["zero_emb"]) <= 1e-6


def test_generate_is_the_staged_run(generations: dict) -> None:
    result = generations["generate"]
    assert torch.equal(result.images, generations["ours"]["images"])
    assert torch.equal(result.embeddings, generations["ours"]["image_emb"])


def stages_of(pipe: Kandinsky, prompt: str, seed: int, n: int, opts: Sampling):
    """generate()'s stages for n images of one prompt: (embeddings, latents, images)."""
    seeds = [seed + i for i in range(n)]
    gens = [make_generator(s) for s in seeds]
    z = yield from pipe.sample_prior(pipe.encode_text([prompt]), seeds, gens, opts)
    latents = yield from pipe.decode_latents(z, gens, opts, (IMAGE, IMAGE))
    return z, latents, (yield from pipe.to_pixels(latents))


def test_requests_batched_equal_each_alone(pipe: Kandinsky) -> None:
    """Two different requests run together (their tracks share every batch of every stage)
    give what each gives alone: embeddings and latents to fp32 rounding (relative 1e-5), and
    MoVQ's images of the same latents within 1/255. (Images of the whole run can differ by more:
    the tiny random decoder's latents are ~70, far outside MoVQ's range, which amplifies their
    1e-6 relative rounding to ~5e-3; the real model's latents are O(1).)"""
    opts = Sampling(prior_steps=STEPS[0], decoder_steps=STEPS[1])

    def ops() -> list:
        return [stages_of(pipe, PROMPT, 1, 1, opts), stages_of(pipe, "blue dog", 9, 2, opts)]

    together = run_many(pipe, ops())
    alone = [run_direct(pipe, op) for op in ops()]
    for a, b in zip(together, alone):
        for x, y in zip(a[:2], b[:2]):
            assert max_diff(x, y) <= 1e-5 * y.abs().max()
    assert not torch.allclose(together[0][0], together[1][0][:1])
    side = IMAGE // pipe.nets.movq_scale
    latents = torch.randn(3, pipe.nets.latent_channels, side, side, generator=torch.Generator().manual_seed(0))
    batched = run_direct(pipe, pipe.to_pixels(latents))
    for i in range(3):
        assert max_diff(batched[i:i + 1], run_direct(pipe, pipe.to_pixels(latents[i:i + 1]))) <= 1 / 255


def test_same_seed_same_image(pipe: Kandinsky) -> None:
    opts = Sampling(prior_steps=3, decoder_steps=3)
    first, again = (run_direct(pipe, generate(pipe, PROMPT, n=2, seed=4, opts=opts)) for _ in range(2))
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images[0], first.images[1])


def test_steps_never_walk_the_networks_modules(pipe: Kandinsky, monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' ModelMixin.dtype and .device visit every submodule (about 1 ms a call on
    the real UNet): a generation asks neither from our code (diffusers' own forward asks once)."""
    import sys

    from diffusers.models.modeling_utils import ModelMixin

    ours = str(Path(sys.modules["pipelines"].__file__).parent)
    asked: list[str] = []

    def counted(name: str) -> property:
        original = getattr(ModelMixin, name)

        def get(module: object) -> object:
            if sys._getframe(1).f_code.co_filename.startswith(ours):
                asked.append(name)
            return original.fget(module)
        return property(get)

    for name in ("dtype", "device"):
        monkeypatch.setattr(ModelMixin, name, counted(name))
    run_direct(pipe, generate(pipe, PROMPT, n=2, seed=4, opts=Sampling(prior_steps=2, decoder_steps=2)))
    assert asked == []
    probe = compile("unet.dtype, unet.device", f"{ours}/probe.py", "eval")  # as if asked from pipelines/
    assert eval(probe, {"unet": pipe.nets.unet}) == (torch.float32, torch.device("cpu"))
    assert asked == ["dtype", "device"]


def test_spacings_match_diffusers_schedulers() -> None:
    from diffusers import DDPMScheduler, UnCLIPScheduler

    unclip, ddpm = UnCLIPScheduler(), DDPMScheduler(steps_offset=1)
    for n in (2, 5, 6, 7, 21, 23, 25, 31, 50, 100):
        unclip.set_timesteps(n)
        ddpm.set_timesteps(n)
        assert spaced("unclip", 1000, n) == unclip.timesteps.tolist(), n
        assert spaced("leading", 1000, n, offset=1) == ddpm.timesteps.tolist(), n


def test_configs_from_the_schedulers(pipe: Kandinsky) -> None:
    """The folder's scheduler configs as ours, and our noise tables against diffusers'."""
    from diffusers import DDPMScheduler, UnCLIPScheduler

    prior, dec = pipe.stages["prior"].cfg, pipe.stages["decoder"].cfg
    assert (prior.prediction, prior.clip_x0, prior.spacing, prior.variance) == ("x0", 5.0, "unclip", "fixed_small")
    assert (dec.prediction, dec.clip_x0, dec.spacing, dec.steps_offset) == ("eps", None, "leading", 1)
    folder = pipe.nets.layout.root
    theirs = [UnCLIPScheduler.from_pretrained(folder / "prior" / "scheduler"),
              DDPMScheduler.from_pretrained(folder / "decoder" / "scheduler")]
    for sched, ours in zip(theirs, (pipe.nets.prior_schedule, pipe.nets.decoder_schedule)):
        assert (sched.alphas_cumprod.double() - ours.alphas_cumprod).abs().max() < 1e-6


def test_scheduler_configs_we_cannot_follow_are_refused() -> None:
    from pipelines.kandinsky.schedulers import ddpm_config, unclip_config

    assert unclip_config({}).clip_x0 == 1.0 and unclip_config({}).prediction == "eps"  # the class's defaults
    for bad in ({"timestep_spacing": "trailing"}, {"thresholding": True}, {"beta_schedule": "scaled_linear"},
                {"variance_type": "fixed_large_log"}):
        with pytest.raises(ValueError, match="unsupported|not supported"):
            ddpm_config(bad)


def test_sizes(pipe: Kandinsky) -> None:
    """Any WxH on the 4-pixel grid (MoVQ scale 2) from half to three times the native 32,
    aspect up to 3:1; listed: native first."""
    rule = pipe.size_rule
    assert rule.default == (IMAGE, IMAGE) and rule.listed[0] == (IMAGE, IMAGE)
    assert (3 * IMAGE, 2 * IMAGE) in rule.listed and (2 * IMAGE, 3 * IMAGE) in rule.listed
    assert pipe.output((48, 16)).size == (48, 16)  # 3:1
    for bad in ((IMAGE + 2, IMAGE), (12, 12), (100, 100), (64, 16)):  # off grid, too small, too large, 4:1
        with pytest.raises(InvalidInput, match="not a supported size") as err:
            pipe.output(bad)
        assert err.value.param == "size"


def test_wide_generation_matches_diffusers(model_dir: Path, pipe: Kandinsky) -> None:
    """A 48x32 image (width x height): latents [1, C, 16, 24], decoded by both at that size."""
    width, height = 48, 32
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(1, pipe.nets.latent_channels, height // 2, width // 2, generator=gen)
    z = torch.randn(1, pipe.prior_dim, generator=gen)
    opts = Sampling(decoder_steps=STEPS[1], decoder_guidance=GUIDANCE[1], latents={"decoder": noise})
    ours = run_direct(pipe, pipe.decode_latents(z, [make_generator(SEED)], opts, (width, height)))
    _, decoder = reference(model_dir, pipe)
    theirs = decoder(image_embeds=z, negative_image_embeds=pipe.zero_image_emb, height=height, width=width,
                     num_inference_steps=STEPS[1], guidance_scale=GUIDANCE[1], latents=noise.clone(),
                     generator=make_generator(SEED), output_type="latent").images
    assert ours.shape == (1, pipe.nets.latent_channels, 16, 24)
    assert max_diff(ours, theirs) <= TOL
    images = run_direct(pipe, generate(pipe, PROMPT, size=(width, height), opts=Sampling(prior_steps=2,
                                                                                          decoder_steps=2)))
    assert images.images.shape == (1, 3, height, width)


def test_layout_errors(model_dir: Path, tmp_path: Path) -> None:
    assert is_kandinsky_dir(model_dir) and not is_kandinsky_dir(tmp_path)
    with pytest.raises(LayoutError, match="prior/"):
        find_layout(tmp_path)
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    assert not find_layout(copy).has_inpaint
    index = copy / "decoder" / "model_index.json"
    data = json.loads(index.read_text())
    index.write_text(json.dumps(data | {"unet": ["diffusers", "UNet2DModel"]}))
    with pytest.raises(LayoutError, match="UNet2DConditionModel"):
        find_layout(copy)
    index.write_text(json.dumps(data | {"_class_name": "UnCLIPPipeline"}))
    with pytest.raises(LayoutError, match="KandinskyV22Pipeline"):
        find_layout(copy)


# ---- the real Kandinsky 2.2 architecture, on the meta device (no memory, no weights) ----------
# The configs: tests/pipelines/_kandinsky_real.py.


def test_real_configs_build_and_fit_together() -> None:
    """The real configs instantiate (on meta, by `real_nets`, cast to float16), their widths
    agree, and one batched call of each of our stages' networks gives the shapes our tracks
    hold (prior [B, 1280], decoder [B, 8, 64, 64] for 512 px, MoVQ [B, 3, 512, 512])."""
    from pipelines.kandinsky.stages import KandinskyPriorStage, LatentDecoderStage, MovqStage

    nets = real_nets("meta", torch.float16)
    prior, unet, movq, text = nets.prior, nets.unet, nets.movq, nets.text_encoder
    vision = nets.image_encoder.config
    assert REAL_TEXT["projection_dim"] == vision.projection_dim == prior.config.embedding_dim
    assert unet.config.encoder_hid_dim == prior.config.embedding_dim
    assert text.config.max_position_embeddings == prior.config.num_embeddings == nets.tokenizer.model_max_length
    assert {p.dtype for p in unet.parameters()} == {torch.float16} and unet.device.type == "meta"
    assert 4800 < sum(params_millions(nets).values()) < 5000  # 4.9 B
    assert (nets.movq_scale, nets.native_size, nets.embed_dim, nets.latent_channels) == (8, 512, 1280, 4)
    assert nets.decoder_cfg.beta_start == 0.00085 and nets.prior_cfg.clip_x0 == 5.0
    meta = {"device": "meta"}
    null = {"text_emb": torch.zeros(1, 1280, **meta), "text_enc": torch.zeros(1, 77, 1280, **meta),
            "mask": torch.ones(1, 77, dtype=torch.bool, **meta)}
    cond = {k: v.expand(2, *v.shape[1:]) for k, v in null.items()}
    assert KandinskyPriorStage(nets, null).network(torch.zeros(2, 1280, **meta), torch.tensor([999, 0], **meta),
                                                   cond).shape == (2, 1280)
    emb = {"image_emb": torch.zeros(2, 1280, **meta)}
    out = LatentDecoderStage(nets, torch.zeros(1, 1280, **meta)).network(
        torch.zeros(2, 4, 64, 64, **meta), torch.tensor([981, 1], **meta), emb, None)
    assert out.shape == (2, 8, 64, 64)
    latents = torch.zeros(1, 4, 64, 64, dtype=movq.dtype, **meta)
    assert movq.decode(latents, force_not_quantize=True).sample.shape == (1, 3, 512, 512)
    assert MovqStage(nets).key == "movq"


def test_networks_take_xformers_where_it_runs(pipe: Kandinsky, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the SDPA backend (this CPU) nothing changes; where pipelines.attention picks xformers
    (CUDA with a working xformers), every diffusers network gets its xformers processors."""
    import pipelines.kandinsky.pipeline as module

    switched = []
    for name in ("prior", "unet", "movq"):
        net = getattr(pipe.nets, name)
        monkeypatch.setattr(net, "enable_xformers_memory_efficient_attention", lambda n=name: switched.append(n))
    assert pipe.use_attention_backend() is pipe and switched == []
    monkeypatch.setattr(module, "backend_for", lambda device, dtype: "xformers")
    pipe.use_attention_backend()
    assert switched == ["prior", "unet", "movq"]
