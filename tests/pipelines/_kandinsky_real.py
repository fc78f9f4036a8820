"""Kandinsky 2.2's real architecture with seeded random weights, built in memory on a
device (no disk: 4.9 B parameters), for tests/pipelines/test_kandinsky.py (on the meta
device) and bench/gpu/'s kandinsky parts; the tiny networks of _kandinsky_tiny.py the same
way (bench/gpu/'s smoke mode). Needs diffusers and transformers; nothing is downloaded.

Each network is built in float32 on the device (its initializers run there, seeded by
torch.manual_seed) and then cast, one network at a time: builds with the same seed and
device hold the same weights in every dtype (float16 ones are the float32 ones rounded),
so that dtypes can be compared, and the peak is the largest network in float32 (the
vision tower, 7.4 GB) on top of the rest in the target dtype.

The tokenizer is _kandinsky_tiny's (single letters; its ids are valid for the real
vocabulary) padded to the real context of 77 tokens; the image processor config is {}
(CLIPImageProcessor's defaults at the vision tower's 224 px).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from pipelines.kandinsky.networks import KandinskyNets
from pipelines.kandinsky.schedulers import ddpm_config, unclip_config
from tests.pipelines._kandinsky_tiny import Dims, decoder_pipeline, prior_pipeline, tiny_unet, write_tokenizer

# The component configs of kandinsky-community/kandinsky-2-2-prior and -decoder, as their
# config.json files give them (written down here: nothing is downloaded).
REAL_PRIOR = {"num_attention_heads": 32, "attention_head_dim": 64, "num_layers": 20, "embedding_dim": 1280,
              "num_embeddings": 77, "additional_embeddings": 4, "dropout": 0.0, "time_embed_act_fn": "gelu",
              "norm_in_type": None, "embedding_proj_norm_type": None, "encoder_hid_proj_type": "linear",
              "added_emb_type": "prd", "time_embed_dim": None, "embedding_proj_dim": None, "clip_embed_dim": None}
REAL_TEXT = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "projection_dim": 1280,
             "num_hidden_layers": 32, "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu"}
REAL_VISION = {"hidden_size": 1664, "intermediate_size": 8192, "projection_dim": 1280, "num_hidden_layers": 48,
               "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "gelu"}
REAL_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 8, "addition_embed_type": "image",
    "addition_embed_type_num_heads": 64, "attention_head_dim": 64, "block_out_channels": [384, 768, 1152, 1536],
    "cross_attention_dim": 768, "cross_attention_norm": "group_norm", "encoder_hid_dim": 1280,
    "encoder_hid_dim_type": "image_proj", "layers_per_block": 3, "resnet_time_scale_shift": "scale_shift",
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "class_embed_type": None,
    "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D"],
    "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "ResnetUpsampleBlock2D"]}
REAL_MOVQ = {"act_fn": "silu", "block_out_channels": [128, 256, 256, 512], "in_channels": 3, "latent_channels": 4,
             "layers_per_block": 2, "norm_num_groups": 32, "norm_type": "spatial", "num_vq_embeddings": 16384,
             "out_channels": 3, "sample_size": 32, "vq_embed_dim": 4,
             "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D",
                                  "AttnDownEncoderBlock2D"],
             "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}
# Also the tiny folder's (_kandinsky_tiny's PRIOR_SCHEDULER and DECODER_SCHEDULER hold the same values).
REAL_PRIOR_SCHEDULER = {"clip_sample": True, "clip_sample_range": 5.0, "num_train_timesteps": 1000,
                        "prediction_type": "sample", "variance_type": "fixed_small_log"}
REAL_DECODER_SCHEDULER = {"beta_end": 0.012, "beta_schedule": "linear", "beta_start": 0.00085, "clip_sample": False,
                          "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
                          "timestep_spacing": "leading", "variance_type": "fixed_small"}

Device = str | torch.device


def ready(module: nn.Module, device: Device, dtype: torch.dtype) -> nn.Module:
    """As `networks.load_component` leaves a network: on device, in dtype, eval, no gradients."""
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def built_on(device: Device, dtype: torch.dtype, build: Callable[[], nn.Module]) -> nn.Module:
    """build() in float32 with its initializers on the device, then cast to dtype."""
    with torch.device(device):
        return ready(build(), device, dtype)


def real_tokenizer() -> Any:
    """_kandinsky_tiny's tokenizer (files in a temporary folder, read at once) padding to 77."""
    with tempfile.TemporaryDirectory(prefix="kandinsky-tokenizer-") as tmp:
        tokenizer = write_tokenizer(Path(tmp))
    tokenizer.model_max_length = REAL_TEXT["max_position_embeddings"]
    return tokenizer


def real_unet(device: Device, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """The real decoder UNet alone (1.25 B parameters), seeded."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return built_on(device, dtype, lambda: UNet2DConditionModel(**REAL_UNET))


def real_nets(device: Device, dtype: torch.dtype = torch.float32, seed: int = 0) -> KandinskyNets:
    """Every network of Kandinsky 2.2 (prior, text and vision towers, UNet, MoVQ) with seeded
    random weights, built on the device and cast network by network (see the module's doc)."""
    from diffusers import PriorTransformer, UNet2DConditionModel, VQModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    def on(build: Callable[[], nn.Module]) -> nn.Module:
        return built_on(device, dtype, build)

    torch.manual_seed(seed)  # then the networks in this order
    prior = on(lambda: PriorTransformer(**REAL_PRIOR))
    text = on(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**REAL_TEXT)))
    vision = on(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**REAL_VISION)))
    unet = on(lambda: UNet2DConditionModel(**REAL_UNET))
    movq = on(lambda: VQModel(**REAL_MOVQ))
    return KandinskyNets(prior=prior, text_encoder=text, tokenizer=real_tokenizer(), image_encoder=vision, unet=unet,
                         movq=movq, prior_cfg=unclip_config(REAL_PRIOR_SCHEDULER),
                         decoder_cfg=ddpm_config(REAL_DECODER_SCHEDULER))


def tiny_nets(device: Device, dtype: torch.dtype = torch.float32, seed: int = 0, dims: Optional[Dims] = None
              ) -> KandinskyNets:
    """_kandinsky_tiny's networks (built on the CPU, as its tests build them), on device in
    dtype, without writing a model folder."""
    dims = dims or Dims()
    with tempfile.TemporaryDirectory(prefix="kandinsky-tiny-") as tmp:
        prior = prior_pipeline(Path(tmp), seed, dims)
    decoder = decoder_pipeline(seed, dims)
    return KandinskyNets(
        prior=ready(prior.prior, device, dtype), text_encoder=ready(prior.text_encoder, device, dtype),
        tokenizer=prior.tokenizer, image_encoder=ready(prior.image_encoder, device, dtype),
        unet=ready(decoder.unet, device, dtype), movq=ready(decoder.movq, device, dtype),
        prior_cfg=unclip_config(prior.scheduler.config), decoder_cfg=ddpm_config(decoder.scheduler.config))


def tiny_decoder_unet(device: Device, dtype: torch.dtype = torch.float32, seed: int = 0,
                      dims: Optional[Dims] = None) -> nn.Module:
    """_kandinsky_tiny's decoder UNet alone, seeded (default initializers)."""
    torch.manual_seed(seed)
    return ready(tiny_unet(dims=dims or Dims()), device, dtype)


def diffusers_pipelines(nets: KandinskyNets) -> tuple[Any, Any]:
    """diffusers' KandinskyV22PriorPipeline and KandinskyV22Pipeline around the very same
    modules (shared, not copied), with the real schedulers' configs; progress bars off."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, KandinskyV22PriorPipeline, UnCLIPScheduler
    from transformers import CLIPImageProcessor

    side = nets.image_encoder.config.image_size
    processor = CLIPImageProcessor(crop_size=side, size=side)
    prior = KandinskyV22PriorPipeline(
        prior=nets.prior, image_encoder=nets.image_encoder, text_encoder=nets.text_encoder, tokenizer=nets.tokenizer,
        scheduler=UnCLIPScheduler(**REAL_PRIOR_SCHEDULER), image_processor=processor)
    decoder = KandinskyV22Pipeline(unet=nets.unet, scheduler=DDPMScheduler(**REAL_DECODER_SCHEDULER), movq=nets.movq)
    for pipe in (prior, decoder):
        pipe.set_progress_bar_config(disable=True)
    return prior, decoder


def params_millions(nets: KandinskyNets) -> dict[str, float]:
    """Parameters per network, in millions."""
    names = ("prior", "text_encoder", "image_encoder", "unet", "movq")
    return {n: round(sum(p.numel() for p in getattr(nets, n).parameters()) / 1e6, 1) for n in names}
