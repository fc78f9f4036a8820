"""Typed configs for every part of the unCLIP stack, serialized as JSON beside the weights.

A model directory holds `stack.json` (a `StackConfig`) and one safetensors file per module;
`StackConfig.karlo()` describes the public Karlo v1 alpha checkpoints and `StackConfig.tiny()`
a small model of the same architecture used by the tests.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional, get_type_hints

Prediction = Literal["eps", "x0", "v"]
Variance = Literal["fixed_small", "fixed_large", "learned_range"]
ScheduleName = Literal["squaredcos_cap_v2", "linear"]
# Timestep spacings (`diffusion.spaced`): "karlo" Karlo's respacing (with `spacing_power`);
# "unclip" diffusers' UnCLIPScheduler, "leading" its DDPM/DDIM schedulers' (plus `steps_offset`)
Spacing = Literal["karlo", "unclip", "leading"]
INPAINT_CHANNELS = 4  # an inpainting decoder's extra inputs: the kept pixels (3) and the keep mask


@dataclass(frozen=True)
class ClipConfig:
    """CLIP as open_clip builds it: a built-in architecture name or a custom `model_cfg` dict."""

    arch: str = "ViT-L-14"
    model_cfg: Optional[dict] = None  # open_clip model config for custom architectures
    quick_gelu: bool = True  # OpenAI's CLIP weights were trained with QuickGELU
    weights: str = "clip.safetensors"  # file in the model directory
    embed_dim: int = 768
    text_width: int = 768
    context_length: int = 77
    image_size: int = 224
    stats: Optional[str] = "clip_stats.safetensors"  # (mean, std) of image embeddings


@dataclass(frozen=True)
class PriorConfig:
    """The decoder-only transformer prior (Karlo's `PriorTransformer`)."""

    clip_dim: int = 768
    text_ctx: int = 77
    text_width: Optional[int] = None  # width of CLIP's token states (None: clip_dim, as Karlo)
    width: int = 2048
    layers: int = 20
    heads: int = 32
    final_ln: bool = True


@dataclass(frozen=True)
class UNetConfig:
    """A GLIDE-style UNet; the decoder sets `clip_dim`, conv-only upsamplers leave it None."""

    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 6
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # image sizes where attention runs
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    norm_groups: int = 32
    dropout: float = 0.0
    # decoder conditioning (None for upsamplers)
    clip_dim: Optional[int] = 768
    text_ctx: int = 77
    text_width: Optional[int] = None  # width of CLIP's token states (None: clip_dim, as Karlo)
    xf_width: int = 1536
    clip_tokens: int = 4
    # upsamplers: channels of the low-resolution image concatenated to x_t
    low_res_channels: int = 0
    # inpainting decoders (GLIDE-style): the masked image and the keep mask concatenated to
    # x_t (INPAINT_CHANNELS; in_channels counts them); 0 for a plain decoder such as Karlo's
    inpaint_channels: int = 0

    @property
    def is_decoder(self) -> bool:
        return self.clip_dim is not None

    def with_inpaint_inputs(self) -> "UNetConfig":
        """This decoder with the INPAINT_CHANNELS inputs of an inpainting decoder added."""
        return replace(self, in_channels=self.in_channels + INPAINT_CHANNELS, inpaint_channels=INPAINT_CHANNELS)

    @property
    def latent_channels(self) -> int:
        """Channels of x_t itself (in_channels less the concatenated conditions)."""
        return self.in_channels - self.low_res_channels - self.inpaint_channels

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Down-sampling factors at which attention blocks sit."""
        return tuple(self.image_size // r for r in self.attention_resolutions)


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise process and sampling defaults of one stage."""

    num_timesteps: int = 1000
    schedule: ScheduleName = "squaredcos_cap_v2"
    # "linear" betas from beta_start to beta_end (None: Karlo's 1e-4 to 0.02, scaled to 1000 steps)
    beta_start: Optional[float] = None
    beta_end: Optional[float] = None
    prediction: Prediction = "eps"
    variance: Variance = "fixed_small"
    clip_x0: Optional[float] = 1.0  # clamp of the x0 estimate while sampling
    steps: int = 50  # default respaced step count
    guidance: float = 1.0  # default classifier-free guidance scale
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    spacing_power: float = 1.0  # timestep spacing (`diffusion.respace`): 1 even, > 1 denser near t = 0
    spacing: Spacing = "karlo"
    steps_offset: int = 0  # "leading" spacing: added to every timestep (diffusers' steps_offset)
    # The t at which the final step (to the clean sample) evaluates the network, the input
    # being treated as x_t there; 0 is the plain last step. Above 0 that step denoises the
    # residual grain of the earlier x0 predictions instead of passing it through.
    last_step_t: int = 0
    # Upsamplers: > 0 starts sampling at this t from the low-resolution condition noised to
    # it (SDEdit) instead of at the top from pure noise; 0 is the plain start.
    start_t: int = 0


@dataclass(frozen=True)
class PriorStageConfig:
    model: PriorConfig = field(default_factory=PriorConfig)
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(prediction="x0", clip_x0=10.0, steps=25, guidance=4.0)
    )
    best_of: int = 2


@dataclass(frozen=True)
class DecoderStageConfig:
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(variance="learned_range", steps=50, guidance=8.0)
    )


@dataclass(frozen=True)
class UpsamplerStageConfig:
    """One upsampler: `model` runs every step; `last_step_model`, if set, runs the t = 0 step."""

    model: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(steps=7))
    has_last_step_model: bool = False
    name: str = "sr"

    @property
    def out_size(self) -> int:
        return self.model.image_size


@dataclass(frozen=True)
class StackConfig:
    """Everything needed to build a model directory's stack."""

    name: str = "unclip"
    clip: ClipConfig = field(default_factory=ClipConfig)
    prior: PriorStageConfig = field(default_factory=PriorStageConfig)
    decoder: DecoderStageConfig = field(default_factory=DecoderStageConfig)
    upsamplers: tuple[UpsamplerStageConfig, ...] = ()

    @property
    def sizes(self) -> tuple[int, ...]:
        """Output sizes the stack can produce, smallest first."""
        return (self.decoder.model.image_size,) + tuple(u.out_size for u in self.upsamplers)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: dict) -> "StackConfig":
        return _build(cls, data)

    @classmethod
    def load(cls, path: Path) -> "StackConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def karlo(cls) -> "StackConfig":
        """The public Karlo v1 alpha configuration (prior 1B, decoder 900M, SR 64→256)."""
        return cls(name="karlo-v1-alpha", upsamplers=(karlo_sr_config(),))

    @classmethod
    def tiny(cls, clip_dim: int = 32, text_ctx: int = 16) -> "StackConfig":
        """A few-MB stack of the same architecture: 32 px decoder, one 32->64 upsampler
        with a separate last-step network. Used by tests and benchmarks."""
        clip = ClipConfig(arch="tiny", model_cfg=tiny_clip_cfg(clip_dim, text_ctx), embed_dim=clip_dim,
                          text_width=clip_dim, context_length=text_ctx, image_size=32, quick_gelu=False)
        prior = PriorStageConfig(model=PriorConfig(clip_dim=clip_dim, text_ctx=text_ctx, width=64, layers=2, heads=4))
        dec = UNetConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                         attention_resolutions=(16,), num_head_channels=16, norm_groups=8, clip_dim=clip_dim,
                         text_ctx=text_ctx, xf_width=64)
        up = UNetConfig(image_size=64, in_channels=6, out_channels=3, model_channels=16, channel_mult=(1, 2),
                        num_res_blocks=1, attention_resolutions=(), use_scale_shift_norm=False, norm_groups=8,
                        clip_dim=None, low_res_channels=3)
        ups = (UpsamplerStageConfig(model=up, diffusion=DiffusionConfig(steps=4), has_last_step_model=True,
                                    name="sr_32_64"),)
        return cls(name="tiny", clip=clip, prior=prior,
                   decoder=DecoderStageConfig(model=dec, diffusion=DiffusionConfig(variance="learned_range", steps=8,
                                                                                   guidance=3.0)),
                   upsamplers=ups)


def tiny_clip_cfg(embed_dim: int, context_length: int) -> dict:
    """An open_clip model config for a small ViT CLIP (32 px images)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": embed_dim, "heads": 2,
                     "layers": 2},
    }


def karlo_sr_config() -> UpsamplerStageConfig:
    """Karlo's 64→256 super-resolution stage: two conv-only UNets, 7 respaced steps."""
    unet = UNetConfig(
        image_size=256, in_channels=6, out_channels=3, attention_resolutions=(),
        use_scale_shift_norm=False, clip_dim=None, low_res_channels=3,
    )
    return UpsamplerStageConfig(
        model=unet, diffusion=DiffusionConfig(steps=7), has_last_step_model=True, name="sr_64_256"
    )


def _build(cls: Any, data: Any) -> Any:
    """Rebuild nested frozen dataclasses (and tuples) from `dataclasses.asdict` output."""
    if not dataclasses.is_dataclass(cls):
        return data
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _build_value(hints[f.name], data[f.name])
    return cls(**kwargs)


def _build_value(hint: Any, value: Any) -> Any:
    origin = getattr(hint, "__origin__", None)
    args = getattr(hint, "__args__", ())
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if origin is tuple and value is not None:
        inner = args[0] if args else Any
        return tuple(_build_value(inner, v) for v in value)
    if origin is not None and type(None) in args and value is not None:  # Optional[X]
        return _build_value(next(a for a in args if a is not type(None)), value)
    return value
