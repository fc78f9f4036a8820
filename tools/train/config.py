"""The default model of the shapes world and its training hyperparameters.

`default_stack()` is the embedded default model, sized after measured training
costs on a 2-core CPU: CLIP ViT 64 px / patch 16 / text context 24 (8.0 M, of which 6.3 M
are the token embedding), a width-256 prior, a 32 px v-prediction decoder with inpainting
inputs (the kept pixels and the mask, GLIDE-style), two conv-only upsamplers 32 -> 128
-> 256 trained on 64 px crops, and two one-step SDEdit upsamplers 256 -> 512 -> 1024
trained on 128 px crops (~20 M parameters, ~39 MB in fp16).
Its sampling defaults (steps, guidance, sampler) are stored in the StackConfig and so in
the exported `stack.json`.

v-prediction for the image stages: on the page's prototype, an under-trained eps decoder gave
pure colour noise (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) divides by ~5e-5 at the
last step) while v gave right backgrounds; v stays well conditioned over the whole range.

`smoke_stack()` / preset "smoke" is the same structure at toy sizes, for tests.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import (
    ClipConfig,
    DecoderStageConfig,
    DiffusionConfig,
    PriorConfig,
    PriorStageConfig,
    StackConfig,
    UNetConfig,
    UpsamplerStageConfig,
    _build,
)
from pipelines.stage_keys import upsampler_index

VOCAB = 49408  # open_clip's BPE vocabulary (the tokenizer the pipeline uses)


# ---- model architecture -------------------------------------------------------------------


def clip_config(image_size: int, patch: int, width: int, layers: int, context: int, name: str) -> ClipConfig:
    """A custom open_clip ViT CLIP; text width = embed_dim, as the decoder's text projection needs."""
    model_cfg = {
        "embed_dim": width,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "head_width": 32,
                       "patch_size": patch},
        "text_cfg": {"context_length": context, "vocab_size": VOCAB, "width": width, "heads": max(1, width // 32),
                     "layers": layers},
    }
    return ClipConfig(arch=name, model_cfg=model_cfg, quick_gelu=False, embed_dim=width, text_width=width,
                      context_length=context, image_size=image_size)


def image_diffusion(steps: int, guidance: float = 1.0, sampler: str = "ddpm", start_t: int = 0) -> DiffusionConfig:
    """v-prediction, fixed small variance, cosine schedule (decoder and upsamplers)."""
    return DiffusionConfig(prediction="v", variance="fixed_small", clip_x0=1.0, steps=steps, guidance=guidance,
                           sampler=sampler, start_t=start_t)


def upsampler(in_size: int, out_size: int, channels: int, mult: tuple[int, ...], steps: int,
              last_step: bool = False, start_t: int = 0) -> UpsamplerStageConfig:
    """A conv-only upsampler (no attention, no text); `last_step` adds Karlo's separate
    network for the t = 0 step. start_t > 0: sampled in `steps` from the condition noised to
    start_t (SDEdit), to be trained on that input (`UpsamplerTrain.sdedit`). v-prediction
    still: x0 = sqrt(abar) x_t - sqrt(1 - abar) v passes the condition through and learns
    only the correction. Predicting x0 itself failed on flat regions: the UNet's last
    GroupNorm takes a flat crop's level away (measured: colour shifts, background noise 3.8
    at 512 px and 21 at 1024 on clean renders)."""
    unet = UNetConfig(image_size=out_size, in_channels=6, out_channels=3, model_channels=channels, channel_mult=mult,
                      num_res_blocks=1, attention_resolutions=(), norm_groups=8, clip_dim=None, low_res_channels=3)
    diffusion = image_diffusion(steps, start_t=start_t)
    return UpsamplerStageConfig(model=unet, diffusion=diffusion, has_last_step_model=last_step,
                                name=f"sr_{in_size}_{out_size}")


SDEDIT_T = 25  # start of the one-step SDEdit upsamplers; they train on t in [SDEDIT_T / 2, 2 SDEDIT_T)
SDEDIT_TRAIN = {"min_t": SDEDIT_T // 2, "max_t": 2 * SDEDIT_T, "sdedit": True}  # UpsamplerTrain fields


def default_stack() -> StackConfig:
    """The embedded default: 32 px decoder, upsamplers to 128, 256, 512 and 1024 px (the
    last two one-step SDEdit stages: dall-e-2's sizes within seconds on a CPU)."""
    clip = clip_config(64, 16, 128, 4, 24, "shapes-vit-64-16")
    prior = PriorStageConfig(
        model=PriorConfig(clip_dim=128, text_ctx=24, width=256, layers=4, heads=4),
        diffusion=DiffusionConfig(prediction="x0", clip_x0=10.0, steps=25, guidance=2.0),
        best_of=2,
    )
    dec = UNetConfig(image_size=32, in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2, 3),
                     num_res_blocks=2, attention_resolutions=(16, 8), num_head_channels=32, norm_groups=8,
                     clip_dim=128, text_ctx=24, xf_width=128).with_inpaint_inputs()
    ups = (upsampler(32, 128, 32, (1, 2, 2, 4), 8), upsampler(128, 256, 16, (1, 2, 2, 4), 5),
           upsampler(256, 512, 16, (1, 2, 2, 4), 1, start_t=SDEDIT_T), upsampler(512, 1024, 8, (1, 2, 2, 4), 1,
                                                                                start_t=SDEDIT_T))
    return StackConfig(name="shapes-default", clip=clip, prior=prior,
                       decoder=DecoderStageConfig(model=dec, diffusion=image_diffusion(32, 3.0, "ddim")),
                       upsamplers=ups)


def smoke_stack() -> StackConfig:
    """The default's structure at toy sizes (16 px decoder, upsamplers to 32 and 64 px; the
    first a one-step SDEdit stage, the second with a last-step network, so that those code
    paths are exercised too)."""
    clip = clip_config(32, 8, 32, 1, 24, "shapes-smoke")
    prior = PriorStageConfig(model=PriorConfig(clip_dim=32, text_ctx=24, width=32, layers=1, heads=2),
                             diffusion=DiffusionConfig(prediction="x0", clip_x0=10.0, steps=3, guidance=2.0))
    dec = UNetConfig(image_size=16, in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2),
                     num_res_blocks=1, attention_resolutions=(8,), num_head_channels=16, norm_groups=8,
                     clip_dim=32, text_ctx=24, xf_width=32).with_inpaint_inputs()
    ups = (upsampler(16, 32, 8, (1, 2), 1, start_t=SDEDIT_T), upsampler(32, 64, 8, (1, 2), 2, last_step=True))
    return StackConfig(name="shapes-smoke", clip=clip, prior=prior,
                       decoder=DecoderStageConfig(model=dec, diffusion=image_diffusion(3, 2.0, "ddim")),
                       upsamplers=ups)


# ---- training hyperparameters -------------------------------------------------------------


@dataclass(frozen=True)
class StageTrain:
    """What every stage's loop needs. `steps` fixes the learning-rate schedule (linear warm-up,
    cosine to `min_lr_ratio`); training past it continues at the floor. `batch` is the CPU
    batch; on CUDA it is multiplied by `gpu_batch_mult`."""

    steps: int
    batch: int
    lr: float
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    gpu_batch_mult: int = 4
    save_every: int = 250  # steps
    save_minutes: float = 10.0
    log_every: int = 25
    p_canonical: float = 0.5  # else a partial caption (random subset of the attributes)


@dataclass(frozen=True)
class ClipTrain(StageTrain):
    """Contrastive CLIP; `probe_every` steps a zero-shot attribute probe is logged."""

    probe_every: int = 500
    probe_images: int = 128


@dataclass(frozen=True)
class PriorTrain(StageTrain):
    """Prior; the caption is replaced by "" with `p_drop_text` (classifier-free guidance)."""

    p_drop_text: float = 0.1


@dataclass(frozen=True)
class DecoderTrain(StageTrain):
    """Decoder; per sample, exclusive draws: both z_i -> cf_param and text -> "" (the
    unconditional branch of guidance), text alone -> "" (what variations, interpolations
    and text diffs decode with), z_i alone -> cf_param. `input_perturbation`: the DDPM-IP
    gamma (tools.train.objectives.diffusion_loss); 0 trains without it. `p_inpaint`: the
    fraction of samples trained as inpainting (GLIDE): a random box is to be drawn, the
    pixels around it are given (needs a decoder with inpaint_channels; see data.box_masks)."""

    p_drop_both: float = 0.1
    p_drop_text: float = 0.3
    p_drop_image: float = 0.05
    input_perturbation: float = 0.0
    p_inpaint: float = 0.0


@dataclass(frozen=True)
class UpsamplerTrain(StageTrain):
    """Upsampler on `crop`-pixel crops of the output size. The low-res condition is degraded
    so that the upsampler learns to draw clean shapes from what the previous stage draws
    (wavy edges, soft corners): a smooth random warp of up to U(0, lowres_warp) low-res
    pixels with `p_lowres_warp`; a Gaussian blur of sigma U(0, lowres_blur) pixels with
    `p_lowres_blur`, as the paper's first upsampler's condition; then Gaussian noise of std
    U(0, lowres_noise) (in [-1, 1] units) with `p_lowres_noise`. `render_crops` draws only
    the crops (tools/train/upsampler_stage.py), `p_shape_crop` of them centred on the shape.
    Timesteps are drawn from [min_t, max_t or T): the range a stage is sampled in (one DDIM
    step from T - 1 uses the network at T - 1 alone). `sdedit`: x_t is the degraded,
    resized condition noised to t rather than the noised target, as a stage sampled by
    SDEdit (`DiffusionConfig.start_t`) sees it; the target stays the render, so the
    network learns the one step from the condition to the sharp image."""

    crop: int = 64
    lowres_noise: float = 0.05
    p_lowres_noise: float = 0.5
    lowres_blur: float = 0.0
    p_lowres_blur: float = 0.0
    lowres_warp: float = 0.0
    p_lowres_warp: float = 0.0
    last_step_fraction: float = 0.125  # rows trained at t = 0 when a last-step network exists
    render_crops: bool = False
    p_shape_crop: float = 0.0
    min_t: int = 0
    max_t: int = 0
    sdedit: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """A run: the stack to train, the hyperparameters of each stage, the seed."""

    name: str = "default"
    seed: int = 0
    stack: StackConfig = field(default_factory=default_stack)
    clip: ClipTrain = field(default_factory=lambda: ClipTrain(steps=5000, batch=256, lr=5e-4, weight_decay=0.1))
    prior: PriorTrain = field(default_factory=lambda: PriorTrain(steps=3000, batch=256, lr=3e-4, weight_decay=0.01))
    decoder: DecoderTrain = field(default_factory=lambda: DecoderTrain(steps=14000, batch=64, lr=2e-4, save_every=100,
                                                                       input_perturbation=0.1, p_inpaint=0.5))
    upsamplers: tuple[UpsamplerTrain, ...] = (
        UpsamplerTrain(steps=3300, batch=32, lr=2e-4, save_every=100, lowres_blur=1.5, p_lowres_blur=0.5,
                       lowres_warp=1.5, p_lowres_warp=0.5),
        UpsamplerTrain(steps=2000, batch=32, lr=2e-4, save_every=200, lowres_blur=2.0, p_lowres_blur=0.5),
        *(UpsamplerTrain(steps=600, batch=16, lr=5e-4, save_every=100, ema_decay=0.995, crop=128, lowres_blur=1.0,
                         p_lowres_blur=0.5, lowres_warp=1.0, p_lowres_warp=0.25, render_crops=True,
                         p_shape_crop=0.75, **SDEDIT_TRAIN) for _ in range(2)),
    )
    stats_images: int = 4096  # rendered scenes whose CLIP embeddings give clip_mean / clip_std

    def stage(self, name: str) -> StageTrain:
        """Hyperparameters of "clip", "prior", "decoder" or an upsampler ("upsampler_{i}")."""
        index = upsampler_index(name)
        return self.upsamplers[index] if index is not None else getattr(self, name)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return _build(cls, json.loads(Path(path).read_text()))


def smoke_config() -> TrainConfig:
    """Three steps per stage on toy sizes (tests)."""
    common = dict(steps=3, warmup=1, save_every=1000, log_every=1)
    return TrainConfig(
        name="smoke", seed=0, stack=smoke_stack(),
        clip=ClipTrain(batch=8, lr=1e-3, probe_every=0, probe_images=4, **common),
        prior=PriorTrain(batch=8, lr=1e-3, **common),
        decoder=DecoderTrain(batch=4, lr=1e-3, input_perturbation=0.1, p_inpaint=0.5, **common),
        upsamplers=(UpsamplerTrain(batch=2, lr=1e-3, crop=16, lowres_blur=1.0, p_lowres_blur=0.5, lowres_warp=1.0,
                                   p_lowres_warp=0.5, **SDEDIT_TRAIN, **common),
                    UpsamplerTrain(batch=2, lr=1e-3, crop=16, lowres_blur=1.0, p_lowres_blur=0.5, render_crops=True,
                                   p_shape_crop=0.5, **common)),
        stats_images=32,
    )


PRESETS = {"default": TrainConfig, "smoke": smoke_config}


def preset(name: str) -> TrainConfig:
    """A named training configuration."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
