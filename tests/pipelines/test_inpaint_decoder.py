"""The inpainting decoder (GLIDE-style extra inputs: kept pixels and keep mask) on small
random-weight stacks: what the UNet reads, what the decoder stage feeds it, and that a
widened plain decoder computes exactly what it did before training."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pipelines import operations as O
from pipelines.checkpoints import random_stack
from pipelines.config import INPAINT_CHANNELS, StackConfig, UNetConfig
from pipelines.sampling import Known, Track, sampling_pairs
from pipelines.unclip import Sampling, UnCLIP, run_direct
from pipelines.unet import UNet, inpaint_condition
from tools.train.widen import widen_weights

FAST = Sampling(prior_steps=3, decoder_steps=3, upsampler_steps=2)


def inpainting(cfg: StackConfig) -> StackConfig:
    """cfg with its decoder given the inpainting inputs."""
    return replace(cfg, decoder=replace(cfg.decoder, model=cfg.decoder.model.with_inpaint_inputs()))


def decoder_inputs(cfg: UNetConfig, b: int, seed: int = 0) -> tuple:
    """Random (x, t, image_emb, text_emb, text_enc, mask) for a decoder of cfg."""
    g = torch.Generator().manual_seed(seed)
    s, d = cfg.image_size, cfg.clip_dim
    return (torch.randn(b, 3, s, s, generator=g), torch.randint(0, 1000, (b,), generator=g),
            torch.randn(b, d, generator=g), torch.randn(b, d, generator=g),
            torch.randn(b, cfg.text_ctx, d, generator=g), torch.ones(b, cfg.text_ctx, dtype=torch.bool))


def test_unet_without_inpaint_input_is_given_nothing_kept() -> None:
    cfg = inpainting(StackConfig.tiny()).decoder.model
    torch.manual_seed(0)
    net = UNet(cfg).eval()
    args = decoder_inputs(cfg, 2)
    x0, keep = torch.rand(2, 3, 32, 32) * 2 - 1, (torch.rand(2, 1, 32, 32) > 0.5).float()
    with torch.no_grad():
        none = net(*args)
        zeros = net(*args, inpaint=torch.zeros(2, 4, 32, 32))
        given = net(*args, inpaint=inpaint_condition(x0, keep))
    assert torch.equal(none, zeros)
    assert (given - none).abs().max() > 1e-3, "the kept pixels must reach the network"


def test_widened_decoder_computes_what_it_did() -> None:
    plain = StackConfig.tiny().decoder.model
    torch.manual_seed(1)
    net = UNet(plain).eval()
    wide = UNet(inpainting(StackConfig.tiny()).decoder.model).eval()
    wide.load_state_dict(widen_weights(net.state_dict(), INPAINT_CHANNELS))
    args = decoder_inputs(plain, 2, seed=1)
    inp = inpaint_condition(torch.rand(2, 3, 32, 32) * 2 - 1, (torch.rand(2, 1, 32, 32) > 0.5).float())
    with torch.no_grad():
        assert torch.allclose(wide(*args, inpaint=inp), net(*args), atol=1e-6)


@pytest.fixture(scope="module")
def pipe() -> UnCLIP:
    return UnCLIP(random_stack(inpainting(StackConfig.tiny()), seed=2))


def capture_inpaint(pipe: UnCLIP, monkeypatch: pytest.MonkeyPatch) -> list:
    """Record the `inpaint` argument of every decoder call."""
    seen, forward = [], pipe.stack.decoder.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("inpaint"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(pipe.stack.decoder, "forward", spy)
    return seen


def test_decoder_stage_feeds_each_tracks_kept_pixels(pipe: UnCLIP, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows: track with a constraint, track without; then their unconditional (guided) rows."""
    seen = capture_inpaint(pipe, monkeypatch)
    stage = pipe.stages["decoder"]
    text = pipe.encode_text(["a green square"])
    cond = {"image_emb": torch.randn(1, 32), "text_emb": text.pooled, "text_enc": text.states, "mask": text.mask}
    x0, keep = torch.rand(1, 3, 32, 32) * 2 - 1, torch.ones(1, 1, 32, 32)
    keep[..., 8:24, 8:24] = 0
    pairs = sampling_pairs(stage.timesteps(3))
    tracks = [Track(torch.randn(1, 3, 32, 32), list(pairs), "ddim", guidance=3.0, cond=cond, known=Known(x0, keep)),
              Track(torch.randn(1, 3, 32, 32), list(pairs), "ddim", guidance=3.0, cond=cond)]
    stage.step(tracks)
    got = seen[-1]
    want = inpaint_condition(x0, keep)[0]
    assert got.shape == (4, 4, 32, 32)
    assert torch.equal(got[0], want) and torch.equal(got[2], want)
    assert not got[1].any() and not got[3].any()


def test_inpaint_with_an_inpainting_decoder_keeps_pixels_outside_the_mask(
    pipe: UnCLIP, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = capture_inpaint(pipe, monkeypatch)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 64) * 1.6 - 0.8, 3, 1, 1)
    keep = torch.ones(1, 1, 64, 64)
    keep[..., 16:48, 16:48] = 0
    out = run_direct(pipe, O.inpaint(pipe, img, keep, "a green square", seed=1, size=64, opts=FAST))
    k = keep[0, 0].bool()
    assert torch.allclose(out.images[0][:, k], img[0][:, k], atol=1e-6)
    assert seen and all(s is not None and s[:, 3].sum() > 0 for s in seen), "every decoder step sees the kept pixels"
