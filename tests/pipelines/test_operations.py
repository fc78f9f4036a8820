"""The five operations on a small random-weight stack of the real architecture.

The decoder's last conv is scaled down (x0.02) so that its eps prediction is small and
smooth, the regime of a trained denoiser, where DDIM inversion is well conditioned.
Measured on it at 20 decoder steps, guidance 1: plain DDIM inversion 31.5 dB, with two
fixed-point refinements per inversion step (the default) 65.4 dB; at guidance 3: 23.1 and
42.9 dB.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import imageio
from pipelines import operations as O
from pipelines.checkpoints import random_stack
from pipelines.config import StackConfig
from pipelines.errors import InvalidInput
from pipelines.sizes import Output
from pipelines.unclip import Sampling, UnCLIP, make_generator, run_direct, run_many

RECON = Sampling(decoder_steps=20, decoder_guidance=1.0)
FAST = Sampling(prior_steps=4, decoder_steps=4, upsampler_steps=2)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = ((a - b) ** 2).mean().item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def pipe() -> UnCLIP:
    stack = random_stack(StackConfig.tiny(), seed=0)
    with torch.no_grad():
        stack.decoder.out[2].weight.mul_(0.02)
        stack.decoder.out[2].bias.zero_()
    return UnCLIP(stack)


def smooth_image(seed: int, size: int = 32) -> torch.Tensor:
    """A blurred random image [1, 3, size, size] in [-0.8, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 3, size, size), generator=g) * 1.6 - 0.8
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1)


def test_variation_eta0_reconstructs(pipe: UnCLIP) -> None:
    img = smooth_image(0)
    out = run_direct(pipe, O.variations(pipe, img, eta=0.0, size=32, opts=RECON))
    assert psnr(out.images, img) >= 50.0


def test_refined_inversion_beats_plain_inversion(pipe: UnCLIP) -> None:
    img = smooth_image(0)
    got = {}
    for refine in (0, 2):
        opts = Sampling(decoder_steps=10, decoder_guidance=3.0, inversion_refine=refine)
        got[refine] = psnr(run_direct(pipe, O.variations(pipe, img, eta=0.0, size=32, opts=opts)).images, img)
    assert got[0] >= 15.0  # plain DDIM inversion: first order in the step size (18.8 dB measured)
    assert got[2] >= got[0] + 10.0  # refined: 36.5 dB measured


def test_variation_eta_varies_more(pipe: UnCLIP) -> None:
    img = smooth_image(1)
    d = {eta: psnr(run_direct(pipe, O.variations(pipe, img, eta=eta, size=32, opts=RECON)).images, img)
         for eta in (0.0, 1.0)}
    assert d[1.0] < d[0.0] - 5.0


def test_variation_runs_upsamplers(pipe: UnCLIP) -> None:
    out = run_direct(pipe, O.variations(pipe, smooth_image(2), n=2, eta=0.5, seed=3, size=64, opts=FAST))
    assert out.images.shape == (2, 3, 64, 64)
    assert not torch.equal(out.images[0], out.images[1])


def test_interpolation_slerp_endpoints_and_norms(pipe: UnCLIP) -> None:
    a, b = smooth_image(3), smooth_image(4)
    thetas = [0.0, 0.25, 0.5, 1.0]
    out = run_direct(pipe, O.interpolate(pipe, images=[a, b], thetas=thetas, mode="slerp", size=32, opts=RECON))
    assert psnr(out.images[0:1], a) >= 30.0 and psnr(out.images[3:4], b) >= 30.0
    z = out.embeddings
    n1, n2 = z[0].norm(), z[3].norm()
    for i, th in enumerate(thetas):
        assert torch.isclose(z[i].norm(), (1 - th) * n1 + th * n2, rtol=1e-4)
    cos = torch.nn.functional.cosine_similarity
    angle = lambda u, v: torch.arccos(cos(u, v, dim=0).clamp(-1, 1))  # noqa: E731
    assert torch.isclose(angle(z[0], z[1]), 0.25 * angle(z[0], z[3]), rtol=1e-3)


def test_interpolation_fixed_mode_shares_latent(pipe: UnCLIP) -> None:
    a, b = smooth_image(5), smooth_image(6)
    fixed = run_direct(pipe, O.interpolate(pipe, images=[a, b], thetas=[0.0, 1.0], mode="fixed", size=32, opts=RECON))
    assert psnr(fixed.images[0:1], a) >= 30.0  # x_T of the first image, its own z
    assert psnr(fixed.images[1:2], b) < 30.0  # b's z on a's x_T: not b's reconstruction


def test_interpolation_between_prompts(pipe: UnCLIP) -> None:
    out = run_direct(pipe, O.interpolate(pipe, prompts=["a red circle", "a blue square"], thetas=[0, 0.5, 1],
                                         size=64, opts=FAST))
    assert out.images.shape == (3, 3, 64, 64)


def test_text_diff_theta0_reproduces_and_zd_unit(pipe: UnCLIP) -> None:
    img = smooth_image(7)
    out = run_direct(pipe, O.text_diff(pipe, img, "a blue circle", "a red circle", frames=3, max_theta=0.5,
                                       size=32, opts=RECON))
    assert psnr(out.images[0:1], img) >= 30.0
    assert torch.isclose(out.direction.norm(), torch.tensor(1.0), atol=1e-5)
    assert out.thetas == [0.0, 0.25, 0.5]
    assert not torch.allclose(out.images[0], out.images[2], atol=1e-3)


def _square_mask(size: int) -> torch.Tensor:
    keep = torch.ones(1, 1, size, size)
    keep[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0
    return keep


def _quantized(img: torch.Tensor) -> torch.Tensor:
    """An image whose values are exact uint8 levels, as decoded PNGs are."""
    return imageio.to_tensor(Image.fromarray(imageio.to_uint8(img)[0]))


def test_inpaint_keeps_pixels_outside_mask_exactly(pipe: UnCLIP) -> None:
    img = _quantized(smooth_image(8, 64))
    keep = _square_mask(64)
    out = run_direct(pipe, O.inpaint(pipe, img, keep, "a green square", seed=1, size=64, resample=2, opts=FAST))
    got, want = imageio.to_uint8(out.images), imageio.to_uint8(img)
    k = keep[0, 0].bool().numpy()
    assert np.array_equal(got[0][k], want[0][k])
    assert not np.array_equal(got[0][~k], want[0][~k])


def test_an_image_of_another_aspect_is_centre_cropped_not_stretched(pipe: UnCLIP) -> None:
    """A 96x64 image whose centre 64x64 is the 64 px test image (the sides differ): the
    square model's variation at eta 0 and inpainting both see the centre only."""
    centre = _quantized(smooth_image(8, 64))
    wide = torch.cat([torch.full((1, 3, 64, 16), 0.9), centre, torch.full((1, 3, 64, 16), -0.9)], dim=-1)
    keep = _square_mask(64)
    keep_wide = torch.cat([torch.zeros(1, 1, 64, 16), keep, torch.ones(1, 1, 64, 16)], dim=-1)
    pair = [run_direct(pipe, O.inpaint(pipe, img, k, "a green square", seed=1, size=64, resample=2, opts=FAST))
            for img, k in ((centre, keep), (wide, keep_wide))]
    assert torch.equal(pair[0].images, pair[1].images)
    same = [run_direct(pipe, O.variations(pipe, img, eta=0.0, size=32, opts=RECON)) for img in (centre, wide)]
    assert torch.equal(same[0].images, same[1].images)
    assert O.fit(torch.zeros(1, 1, 30, 100), Output(40, 20)).shape[-2:] == (30, 60)
    assert O.fit(torch.zeros(1, 1, 100, 30), Output(40, 20)).shape[-2:] == (15, 30)


def test_inpaint_all_opaque_returns_input(pipe: UnCLIP) -> None:
    img = _quantized(smooth_image(9, 64))
    out = run_direct(pipe, O.inpaint(pipe, img, torch.ones(1, 1, 64, 64), "anything", size=64, opts=FAST))
    assert np.array_equal(imageio.to_uint8(out.images), imageio.to_uint8(img))


def test_inpaint_all_transparent_is_generation(pipe: UnCLIP) -> None:
    img = smooth_image(10, 64)
    edit = run_direct(pipe, O.inpaint(pipe, img, torch.zeros(1, 1, 64, 64), "a red circle", seed=5, size=64, opts=FAST))
    gen = run_direct(pipe, O.generate(pipe, "a red circle", seed=5, size=64, opts=FAST))
    assert torch.equal(edit.images, gen.images)


@pytest.mark.parametrize("name", ["generate", "variations", "inpaint"])
def test_seeds(pipe: UnCLIP, name: str) -> None:
    img = smooth_image(11, 64)
    ops = {
        "generate": lambda s: O.generate(pipe, "a red circle", seed=s, size=64, opts=FAST),
        "variations": lambda s: O.variations(pipe, img, seed=s, eta=0.8, size=64, opts=FAST),
        "inpaint": lambda s: O.inpaint(pipe, img, _square_mask(64), "a dot", seed=s, size=64, opts=FAST),
    }
    a, b, c = (run_direct(pipe, ops[name](s)).images for s in (3, 3, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_run_many_batches_operations_and_matches_run_direct(pipe: UnCLIP, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three different operations driven together: each result is what it is alone
    (to float tolerance), and the decoder steps of all three share model calls."""
    img = smooth_image(12, 64)
    ops = [
        lambda: O.generate(pipe, "a red circle", seed=1, size=64, opts=FAST),
        lambda: O.variations(pipe, img, seed=2, size=64, opts=FAST),
        lambda: O.inpaint(pipe, img, _square_mask(64), "a dot", seed=3, size=64, opts=FAST),
    ]
    alone = [run_direct(pipe, op()).images for op in ops]
    decoder, sizes = pipe.stages["decoder"], []
    step = decoder.step
    monkeypatch.setattr(decoder, "step", lambda tracks: (sizes.append(len(tracks)), step(tracks))[1])
    together = [r.images for r in run_many(pipe, [op() for op in ops])]
    for a, b in zip(alone, together):
        assert (a - b).abs().max() < 1e-2 and (a - b).abs().mean() < 1e-5
    assert max(sizes) == 3  # the three decoder tracks (after the inversion) in one call


def _png(mode: str, size: tuple[int, int], alpha: int | None = None) -> bytes:
    color = (10, 20, 30) if alpha is None else (10, 20, 30, alpha)
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _raises(fn, param: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        fn()
    assert info.value.param == param
    return info.value


def test_bad_inputs(pipe: UnCLIP) -> None:
    image = imageio.open_image(_png("RGB", (64, 64)))
    _raises(lambda: imageio.keep_mask(image, imageio.open_image(_png("RGBA", (32, 32), 0))), "mask")
    _raises(lambda: imageio.keep_mask(image, imageio.open_image(_png("RGB", (64, 64)), "mask")), "mask")
    _raises(lambda: imageio.keep_mask(image, None), "image")
    _raises(lambda: imageio.open_image(b"not an image at all"), "image")
    _raises(lambda: imageio.open_image(b""), "image")
    img = smooth_image(12)
    _raises(lambda: run_direct(pipe, O.interpolate(pipe, images=[img, img], thetas=[0.5, 1.5])), "thetas")
    _raises(lambda: run_direct(pipe, O.interpolate(pipe, images=[img])), "image")
    _raises(lambda: run_direct(pipe, O.interpolate(pipe, prompts=["only one"])), "prompt")
    _raises(lambda: run_direct(pipe, O.text_diff(pipe, img, "x", max_theta=-0.1)), "max_theta")
    _raises(lambda: run_direct(pipe, O.variations(pipe, torch.zeros(2, 3, 32, 32))), "image")
    _raises(lambda: run_direct(pipe, O.variations(pipe, img, eta=2.0)), "eta")
    _raises(lambda: run_direct(pipe, O.generate(pipe, "x", size=48)), "size")


def test_opaque_mask_keeps_everything() -> None:
    image = imageio.open_image(_png("RGB", (16, 16)))
    keep = imageio.keep_mask(image, imageio.open_image(_png("RGBA", (16, 16), 255)))
    assert keep.shape == (1, 1, 16, 16) and bool(keep.all())


def test_negative_prompt(pipe: UnCLIP) -> None:
    """A negative prompt's encoding replaces the empty caption's in the prior's and the
    decoder's unconditional rows; None or "" change nothing."""
    base = run_direct(pipe, O.generate(pipe, "a red circle", seed=2, size=32, opts=FAST))
    for empty in (None, ""):
        same = run_direct(pipe, O.generate(pipe, "a red circle", seed=2, size=32, opts=FAST, negative_prompt=empty))
        assert torch.equal(same.images, base.images) and torch.equal(same.embeddings, base.embeddings)
    neg = run_direct(pipe, O.generate(pipe, "a red circle", seed=2, size=32, opts=FAST, negative_prompt="blue"))
    assert not torch.allclose(neg.embeddings, base.embeddings)
    text, negative = pipe.encode_text(["a red circle"]), pipe.encode_text(["blue"])
    z = base.embeddings
    plain = run_direct(pipe, pipe.decode(z, text, [make_generator(2)], FAST))
    with_neg = run_direct(pipe, pipe.decode(z, text, [make_generator(2)], FAST, negative=negative))
    assert not torch.allclose(plain, with_neg)


def test_pipeline_properties(pipe: UnCLIP) -> None:
    clip = pipe.stack.clip
    assert pipe.device == clip.device and pipe.default_best_of == pipe.cfg.prior.best_of
    assert pipe.context_length == clip.cfg.context_length and pipe.image_tokens == clip.image_tokens
    assert pipe.count_tokens(["", "a red circle"]) == [clip.count_tokens(""), clip.count_tokens("a red circle")]
