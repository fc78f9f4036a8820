"""The unCLIP stack as one module: CLIP, prior, decoder and any number of upsamplers."""

from __future__ import annotations

import torch
import torch.nn as nn

from .clip import ClipEncoder
from .config import StackConfig, UpsamplerStageConfig
from .diffusion import Schedule
from .prior import PriorTransformer
from .unet import UNet


class Upsampler(nn.Module):
    """One upsampling stage: `model` for every step, `last_step_model` (optional) for t = 0."""

    def __init__(self, cfg: UpsamplerStageConfig):
        super().__init__()
        self.cfg = cfg
        self.model = UNet(cfg.model)
        self.last_step_model = UNet(cfg.model) if cfg.has_last_step_model else None

    def unet_for(self, t: int) -> UNet:
        return self.last_step_model if (t == 0 and self.last_step_model is not None) else self.model


class UnCLIPStack(nn.Module):
    """All networks of a model directory, plus the CLIP image-embedding statistics
    (clip_mean, clip_std: [D]) that the prior's normalized space uses."""

    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.cfg = cfg
        self.clip = ClipEncoder(cfg.clip)
        self.prior = PriorTransformer(cfg.prior.model)
        self.decoder = UNet(cfg.decoder.model)
        self.upsamplers = nn.ModuleList(Upsampler(u) for u in cfg.upsamplers)
        dim = cfg.prior.model.clip_dim
        self.register_buffer("clip_mean", torch.zeros(dim))
        self.register_buffer("clip_std", torch.ones(dim))
        self.prior_schedule = Schedule.from_config(cfg.prior.diffusion)
        self.decoder_schedule = Schedule.from_config(cfg.decoder.diffusion)
        self.upsampler_schedules = [Schedule.from_config(u.diffusion) for u in cfg.upsamplers]

    @property
    def device(self) -> torch.device:
        return self.clip_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the diffusion networks."""
        return self.decoder.time_embed[0].weight.dtype

    def use_channels_last(self, enabled: bool = True) -> "UnCLIPStack":
        """The convolutional networks (decoder, upsamplers) in channels-last memory format
        (or back). Their inputs stay NCHW: the first convolution's output takes the weights'
        format and the rest of each UNet follows. oneDNN (CPU) and cuDNN (CUDA) both run
        convolutions fastest in it: on the shipped model, 1.11x per 256 px generation on a
        2-core CPU (outputs within 6e-6)."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for unet in self.unets():
            unet.to(memory_format=fmt)
        return self

    @property
    def channels_last(self) -> bool:
        """Whether the UNets are in channels-last memory format (`use_channels_last`)."""
        conv = next(p for p in self.decoder.parameters() if p.dim() == 4)
        return conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()

    def unets(self) -> list[UNet]:
        """Every UNet of the stack: the decoder, then each upsampler's networks."""
        nets = [self.decoder]
        for up in self.upsamplers:
            nets += [up.model] + ([up.last_step_model] if up.last_step_model is not None else [])
        return nets

    def denormalize_image_emb(self, z: torch.Tensor) -> torch.Tensor:
        """The prior's normalized space [B, D] -> CLIP image embeddings [B, D]."""
        return z * self.clip_std + self.clip_mean
