"""The paper's operations (pipelines/operations.py) on Kandinsky 2.2, on a tiny random model
folder with an inpainting decoder (tests/pipelines/_kandinsky_tiny.py).

CLIP image preprocessing and the inpainting decoder stage are checked against transformers'
CLIPImageProcessor and diffusers' KandinskyV22InpaintPipeline; DDIM inversion in MoVQ latent
space on a copy whose UNet output is scaled down (x0.02, the regime of a trained denoiser,
as tests/pipelines/test_operations.py does for unCLIP) and whose MoVQ latents are scaled up
(x5: std ~1, as the real model's are; the tiny MoVQ's are ~0.2). Measured there at 10
decoder steps: relative latent error of eta 0 variations 1e-3 at guidance 1 (9e-3 at
guidance 4), of eta 1 variations ~13.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from pipelines import imageio  # noqa: E402
from pipelines import operations as O  # noqa: E402
from pipelines.kandinsky.pipeline import Kandinsky, erode_keep  # noqa: E402
from pipelines.sampling import Known  # noqa: E402
from pipelines.unclip import Sampling, make_generator, run_direct, run_many  # noqa: E402
from tests.pipelines._diffusers_ref import use_float64_tables  # noqa: E402
from tests.pipelines._kandinsky_tiny import CONTEXT, IMAGE, write_model_dir  # noqa: E402

FAST = Sampling(prior_steps=3, decoder_steps=4)
RECON = Sampling(prior_steps=3, decoder_steps=10, decoder_guidance=1.0)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return max_diff(a, b) / b.abs().max().item()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("kandinsky_ops"), inpaint=True)


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> Kandinsky:
    return Kandinsky.load(model_dir)


@pytest.fixture(scope="module")
def smooth(model_dir: Path) -> Kandinsky:
    """A copy whose decoder UNets predict small eps (DDIM inversion well conditioned) and
    whose MoVQ latents have unit scale."""
    pipe = Kandinsky.load(model_dir)
    with torch.no_grad():
        pipe.nets.movq.quant_conv.weight.mul_(5)
        pipe.nets.movq.quant_conv.bias.mul_(5)
        for unet in (pipe.nets.unet, pipe.nets.inpaint_unet):
            unet.conv_out.weight.mul_(0.02)
            unet.conv_out.bias.zero_()
    return pipe


def smooth_image(seed: int, size: int = IMAGE) -> torch.Tensor:
    """A blurred random image [1, 3, size, size] in [-0.8, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 3, size, size), generator=g) * 1.6 - 0.8
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1)


def quantized(img: torch.Tensor) -> torch.Tensor:
    """The image at exact uint8 levels, as decoded PNGs are."""
    return imageio.to_tensor(Image.fromarray(imageio.to_uint8(img)[0]))


def square_mask(size: int = IMAGE) -> torch.Tensor:
    keep = torch.ones(1, 1, size, size)
    keep[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0
    return keep


def latents_only(pipe: Kandinsky, monkeypatch: pytest.MonkeyPatch) -> None:
    """Operations on `pipe` return their final latents instead of MoVQ's images."""
    def identity(latents):
        return latents
        yield  # a generator that yields nothing

    monkeypatch.setattr(pipe, "to_pixels", identity)


# ---- CLIP image embeddings ---------------------------------------------------------------


@pytest.mark.parametrize("side", [IMAGE, 2 * IMAGE, 45])
def test_encode_image_matches_clip_image_processor(pipe: Kandinsky, model_dir: Path, side: int) -> None:
    """Our torch preprocessing + image encoder against transformers' CLIPImageProcessor on
    the same uint8 image: within 1e-4 where no resize is needed (the processor's own size),
    within its uint8 resize's rounding otherwise."""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor.from_pretrained(model_dir / "prior" / "image_processor")
    pixels = imageio.to_uint8(smooth_image(side, side))[0]  # [H, W, 3] uint8
    theirs = proc(images=pixels, return_tensors="pt").pixel_values
    image = imageio.to_tensor(Image.fromarray(pixels))
    ours_in = pipe.clip.image_prep(image)
    emb_theirs = pipe.clip.encode_normalized(theirs)
    emb_ours = pipe.encode_image(image)
    print(f"{side}px: pixel_values max diff {max_diff(ours_in, theirs):.3g}, "
          f"embeddings {max_diff(emb_ours, emb_theirs):.3g}")
    tol = 1e-4 if side == IMAGE else 0.05
    assert max_diff(ours_in, theirs) <= tol * (1 if side == IMAGE else 10)
    assert max_diff(emb_ours, emb_theirs) <= tol * emb_theirs.abs().max()


# ---- variations: MoVQ latents, DDIM inversion, DDIM at eta ------------------------------


def test_inversion_reconstructs_latents(smooth: Kandinsky) -> None:
    img = smooth_image(0)
    latents = smooth.encode_latents(img, (IMAGE, IMAGE))
    z = smooth.encode_image(img)
    x_t = run_direct(smooth, smooth.invert(latents, z, RECON))
    gens = [make_generator(0)]
    ddim = replace(RECON, decoder_sampler="ddim")
    back = run_direct(smooth, smooth.decode_latents(z, gens, ddim, (IMAGE, IMAGE), x_t))
    err, moved = rel(back, latents), rel(x_t, latents)
    print(f"latent reconstruction: relative error {err:.3g} (x_T vs latents: {moved:.3g})")
    assert moved > 0.5 and err < 5e-3


def test_variations_eta0_reconstructs_eta1_varies(smooth: Kandinsky, monkeypatch: pytest.MonkeyPatch) -> None:
    """eta 0 decodes the inverted latents back to the image's MoVQ latents; eta 1 moves far
    from them (latents compared: the random MoVQ decoder is not an autoencoder)."""
    img = smooth_image(1)
    want = smooth.encode_latents(img, (IMAGE, IMAGE))
    latents_only(smooth, monkeypatch)
    err = {eta: rel(run_direct(smooth, O.variations(smooth, img, eta=eta, seed=2, opts=RECON)).images, want)
           for eta in (0.0, 1.0)}
    print(f"variations, relative latent error: eta 0 {err[0.0]:.3g}, eta 1 {err[1.0]:.3g}")
    assert err[0.0] < 5e-3 and err[1.0] > 100 * err[0.0]


def test_variations_shapes_and_seeds(pipe: Kandinsky) -> None:
    img = smooth_image(2)
    a, b, c = (run_direct(pipe, O.variations(pipe, img, n=2, eta=0.8, seed=s, opts=FAST)) for s in (3, 3, 4))
    assert a.images.shape == (2, 3, IMAGE, IMAGE) and a.embeddings.shape == (2, pipe.prior_dim)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images) and not torch.equal(a.images[0], a.images[1])


# ---- interpolations and text diffs --------------------------------------------------------


def test_interpolation_endpoints_and_slerp(smooth: Kandinsky, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = smooth_image(3), smooth_image(4)
    want = [smooth.encode_latents(x, (IMAGE, IMAGE)) for x in (a, b)]
    latents_only(smooth, monkeypatch)
    thetas = [0.0, 0.5, 1.0]
    out = run_direct(smooth, O.interpolate(smooth, images=[a, b], thetas=thetas, mode="slerp", opts=RECON))
    assert rel(out.images[0:1], want[0]) < 5e-3 and rel(out.images[2:3], want[1]) < 5e-3
    z = out.embeddings
    assert torch.isclose(z[1].norm(), (z[0].norm() + z[2].norm()) / 2, rtol=1e-4)
    fixed = run_direct(smooth, O.interpolate(smooth, images=[a, b], thetas=[0.0, 1.0], mode="fixed", opts=RECON))
    assert rel(fixed.images[0:1], want[0]) < 5e-3 and rel(fixed.images[1:2], want[1]) > 1e-2


def test_interpolation_between_prompts(pipe: Kandinsky) -> None:
    out = run_direct(pipe, O.interpolate(pipe, prompts=["a red cat", "a blue dog"], thetas=[0, 0.5, 1], opts=FAST))
    assert out.images.shape == (3, 3, IMAGE, IMAGE)


def test_text_diff(smooth: Kandinsky, monkeypatch: pytest.MonkeyPatch) -> None:
    img = smooth_image(5)
    want = smooth.encode_latents(img, (IMAGE, IMAGE))
    latents_only(smooth, monkeypatch)
    out = run_direct(smooth, O.text_diff(smooth, img, "a blue cat", "a red cat", frames=3, max_theta=0.5,
                                         opts=RECON))
    assert out.images.shape == (3, pipe_channels(smooth), IMAGE // 2, IMAGE // 2)
    assert rel(out.images[0:1], want) < 5e-3  # theta 0: the image itself
    assert torch.isclose(out.direction.norm(), torch.tensor(1.0), atol=1e-5)
    texts = smooth.encode_text(["a blue cat", "a red cat"])
    assert torch.allclose(out.direction, torch.nn.functional.normalize(texts.pooled[0:1] - texts.pooled[1:2]))
    assert rel(out.images[2:3], want) > 1e-2


def pipe_channels(pipe: Kandinsky) -> int:
    return pipe.nets.latent_channels


# ---- inpainting ---------------------------------------------------------------------------


def test_erode_keep_is_diffusers_prepare_mask() -> None:
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import prepare_mask

    g = torch.Generator().manual_seed(0)
    keep = (torch.rand(2, 1, 12, 12, generator=g) > 0.2).float()
    assert torch.equal(erode_keep(keep), prepare_mask(keep.clone()))


@pytest.mark.parametrize("with_unet", [True, False])
def test_inpaint_keeps_unmasked_pixels_exactly(pipe: Kandinsky, with_unet: bool) -> None:
    """With the decoder-inpaint/ UNet, and without one (known-region replacement only)."""
    use = pipe if with_unet else Kandinsky(replace(pipe.nets, inpaint_unet=None))
    img, keep = quantized(smooth_image(6)), square_mask()
    out = run_direct(use, O.inpaint(use, img, keep, "a green dot", n=2, seed=1, opts=FAST))
    got, want = imageio.to_uint8(out.images), imageio.to_uint8(img)
    k = keep[0, 0].bool().numpy()
    for i in range(2):
        assert np.array_equal(got[i][k], want[0][k])
        assert not np.array_equal(got[i][~k], want[0][~k])
    assert not np.array_equal(got[0], got[1])
    again = run_direct(use, O.inpaint(use, img, keep, "a green dot", n=2, seed=1, opts=FAST))
    assert torch.equal(again.images, out.images)


def test_inpaint_decoder_matches_diffusers(pipe: Kandinsky, model_dir: Path) -> None:
    """The inpainting decoder stage (UNet input, mask erosion, re-noising, final replacement)
    against KandinskyV22InpaintPipeline: same image embedding, initial latents and seed."""
    from diffusers import KandinskyV22InpaintPipeline

    ref = KandinskyV22InpaintPipeline.from_pretrained(model_dir / "decoder-inpaint", local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    use_float64_tables(ref.scheduler, pipe.nets.decoder_schedule.alphas_cumprod)
    img, keep = smooth_image(7), square_mask()
    z = pipe.encode_image(smooth_image(8))
    noise = torch.randn(pipe.noise_shape(pipe.output()), generator=torch.Generator().manual_seed(9))
    steps, guidance = 6, 4.0
    theirs = ref(image_embeds=z, negative_image_embeds=pipe.zero_image_emb, image=img.clone(),
                 mask_image=1 - keep, height=IMAGE, width=IMAGE, num_inference_steps=steps,
                 guidance_scale=guidance, generator=make_generator(5), latents=noise.clone(),
                 output_type="latent").images
    opts = Sampling(decoder_steps=steps, decoder_guidance=guidance, latents={"decoder": noise})
    ours = run_direct(pipe, pipe.decode_latents(z, [make_generator(5)], opts, (IMAGE, IMAGE), known=[Known(img, keep)]))
    print(f"inpaint decoder latents: max |ours - diffusers| = {max_diff(ours, theirs):.3g} "
          f"(max |latent| {theirs.abs().max():.3g})")
    assert max_diff(ours, theirs) <= 1e-4 * max(1.0, theirs.abs().max().item())


# ---- batching, negative prompts -----------------------------------------------------------


def test_requests_batched_equal_each_alone(smooth: Kandinsky, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variation, a generation with a negative prompt and a text diff run together (their
    decoder tracks share batches): each one's embeddings and latents are what it gives alone.
    (On the smooth copy: the plain tiny UNet's inversion is so ill-conditioned that it
    amplifies the fp32 rounding of a different batch size to a few percent.)"""
    pipe = smooth
    a, b = smooth_image(10), smooth_image(11)
    latents_only(pipe, monkeypatch)

    def ops() -> list:
        return [O.variations(pipe, a, n=2, seed=1, eta=0.5, opts=FAST),
                O.generate(pipe, "a blue dog", n=2, seed=4, opts=FAST, negative_prompt="red"),
                O.text_diff(pipe, b, "a cat", frames=2, opts=FAST)]

    decoder, sizes = pipe.stages["decoder"], []
    step = decoder.step
    monkeypatch.setattr(decoder, "step", lambda tracks: (sizes.append(len(tracks)), step(tracks))[1])
    together = run_many(pipe, ops())
    assert max(sizes) == 6  # every decoding track in one call
    for x, y in zip(together, [run_direct(pipe, op) for op in ops()]):
        assert rel(x.embeddings, y.embeddings) <= 1e-5
        print(f"batched vs alone: relative latent difference {rel(x.images, y.images):.3g}")
        assert rel(x.images, y.images) <= 1e-5


def test_inpaint_batched_with_generation(pipe: Kandinsky) -> None:
    img, keep = quantized(smooth_image(12)), square_mask()

    def ops() -> list:
        return [O.inpaint(pipe, img, keep, "a dot", seed=3, opts=FAST), O.generate(pipe, "a dot", seed=3, opts=FAST)]

    for x, y in zip(run_many(pipe, ops()), [run_direct(pipe, op) for op in ops()]):
        assert rel(x.embeddings, y.embeddings) <= 1e-5
        assert max_diff(x.images, y.images) <= 1 / 255


def test_negative_prompt(pipe: Kandinsky) -> None:
    opts = replace(FAST, prior_guidance=4.0)
    base = run_direct(pipe, O.generate(pipe, "a red cat", seed=2, opts=opts))
    for empty in (None, ""):
        same = run_direct(pipe, O.generate(pipe, "a red cat", seed=2, opts=opts, negative_prompt=empty))
        assert torch.equal(same.images, base.images) and torch.equal(same.embeddings, base.embeddings)
    neg = run_direct(pipe, O.generate(pipe, "a red cat", seed=2, opts=opts, negative_prompt="blue"))
    assert rel(neg.embeddings, base.embeddings) > 1e-3
    img = smooth_image(13)
    for op in (lambda n: O.inpaint(pipe, img, square_mask(), "a dot", seed=1, opts=opts, negative_prompt=n),
               lambda n: O.interpolate(pipe, prompts=["a", "b"], thetas=[0.5], opts=opts, negative_prompt=n),
               lambda n: O.walk(pipe, "a dog", frames=2, opts=opts, negative_prompt=n)):
        plain, empty, neg = (run_direct(pipe, op(n)) for n in (None, "", "blue"))
        assert torch.equal(plain.embeddings, empty.embeddings)
        assert not torch.allclose(plain.embeddings, neg.embeddings)


def test_negative_prompt_prior_matches_diffusers(pipe: Kandinsky, model_dir: Path) -> None:
    """The prior's guidance against a negative prompt is KandinskyV22PriorPipeline's with
    negative_prompt (its image_embeds). Two steps: diffusers samples the prompt and the
    negative prompt as a batch of two, so its generator agrees with ours for one noise draw
    only. (diffusers also passes the negative prompt's prior sample to the decoder as its
    negative image embedding; our decoder keeps the zero image's.)"""
    from diffusers import KandinskyV22PriorPipeline

    ref = KandinskyV22PriorPipeline.from_pretrained(model_dir / "prior", local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    use_float64_tables(ref.scheduler, pipe.nets.prior_schedule.alphas_cumprod)
    noise = torch.randn(2, pipe.prior_dim, generator=torch.Generator().manual_seed(1))
    theirs = ref("a red cat", negative_prompt="blue", num_inference_steps=2, guidance_scale=4.0,
                 generator=make_generator(5), latents=noise.clone(), output_type="pt").image_embeds
    opts = Sampling(prior_steps=2, prior_guidance=4.0, best_of=1, latents={"prior": noise[:1]})
    ours = run_direct(pipe, pipe.sample_prior(pipe.encode_text(["a red cat"]), [5], [make_generator(5)], opts,
                                              pipe.negative_encoding("blue")))
    print(f"prior with a negative prompt: max |ours - diffusers| = {max_diff(ours, theirs):.3g}")
    assert max_diff(ours, theirs) <= 1e-4


# ---- what the server reads ----------------------------------------------------------------


def test_pipeline_properties(pipe: Kandinsky) -> None:
    assert pipe.device == torch.device("cpu") and pipe.default_best_of == 1
    assert pipe.context_length == CONTEXT
    assert pipe.image_tokens == (32 // 8) ** 2 + 1
    counts = pipe.count_tokens(["", "ab", "a" * 40])
    assert counts[:2] == [2, 4] and counts[2] > CONTEXT


def test_work(pipe: Kandinsky) -> None:
    """operations.work on Kandinsky: prior samples, decoder steps (sampled and inverted), one
    MoVQ decode per image."""
    opts = Sampling(prior_steps=3, decoder_steps=4, inversion_refine=2)
    assert O.work(pipe, None, opts, images=2, prior_samples=2) == {"prior": 6, "decoder": 8, "movq": 2}
    assert O.work(pipe, None, opts, images=1, inversions=1) == {"prior": 0, "decoder": 4 + 3 * 3, "movq": 1}
