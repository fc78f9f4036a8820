"""A tiny random-weight Kandinsky 2.2 model folder (prior/, decoder/ and optionally
decoder-inpaint/ diffusers snapshots, written with save_pretrained), for
tests/pipelines/test_kandinsky.py and test_kandinsky_ops.py. Needs diffusers and
transformers; no downloads (the tokenizer's vocabulary is written here)."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

EMBED = 32  # image/text embedding width D
CONTEXT = 16  # tokens per caption
IMAGE = 32  # output size (MoVQ scale 2: 16 x 16 latents)
PRIOR_SCHEDULER = {"variance_type": "fixed_small_log", "prediction_type": "sample", "num_train_timesteps": 1000,
                   "clip_sample": True, "clip_sample_range": 5.0}


@dataclass(frozen=True)
class Dims:
    """The networks' sizes: embedding width, prior depth, UNet and MoVQ channels per level,
    native image side (the UNet's sample_size is it over the MoVQ scale)."""

    embed: int = EMBED
    prior_layers: int = 2
    unet: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    head_dim: int = 4
    movq: tuple[int, ...] = (32, 64)
    image: int = IMAGE

    @property
    def movq_scale(self) -> int:
        return 2 ** (len(self.movq) - 1)


TINY = Dims()
DECODER_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.00085,
                     "beta_end": 0.012, "clip_sample": False, "prediction_type": "epsilon", "steps_offset": 1,
                     "timestep_spacing": "leading", "variance_type": "fixed_small"}


def write_tokenizer(folder: Path):
    """A CLIPTokenizer over single letters (each also as a word end), saved to folder."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab |= {c + suffix: len(vocab) + i for i, c in enumerate(string.ascii_lowercase)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CONTEXT)


def _wake(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random values for the parameters initialized to all zeros or ones (positional and
    learned embeddings, norms), so that every path of the tiny model carries signal."""
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and (torch.all(p == 0) or torch.all(p == 1)):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def prior_pipeline(tmp: Path, seed: int = 0, dims: Dims = TINY):
    """KandinskyV22PriorPipeline with tiny random networks."""
    from diffusers import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tokenizer = write_tokenizer(tmp / "vocab")
    embed = dims.embed
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=embed, projection_dim=embed, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=CONTEXT, bos_token_id=0,
        eos_token_id=1, pad_token_id=1))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=embed, image_size=32, patch_size=8, projection_dim=embed, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12 * embed // EMBED, embedding_dim=embed,
                             num_layers=dims.prior_layers, num_embeddings=CONTEXT)
    _wake(prior, gen)
    with torch.no_grad():
        prior.clip_std.copy_(0.5 + torch.rand(embed, generator=gen)[None])
    processor = CLIPImageProcessor(crop_size=32, size=32, do_center_crop=True, do_normalize=True, do_resize=True,
                                   resample=3)
    return KandinskyV22PriorPipeline(prior=prior, image_encoder=_wake(vision, gen), text_encoder=_wake(text, gen),
                                     tokenizer=tokenizer, scheduler=UnCLIPScheduler(**PRIOR_SCHEDULER),
                                     image_processor=processor)


def tiny_unet(in_channels: int = 4, dims: Dims = TINY):
    """A tiny UNet2DConditionModel of Kandinsky 2.2's decoder kind (image-embedding conditioning)."""
    from diffusers import UNet2DConditionModel

    levels = len(dims.unet)
    return UNet2DConditionModel(
        sample_size=dims.image // dims.movq_scale, in_channels=in_channels, out_channels=8,
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (levels - 1) + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=dims.unet,
        layers_per_block=dims.layers_per_block, encoder_hid_dim=dims.embed, encoder_hid_dim_type="image_proj",
        cross_attention_dim=dims.unet[0], attention_head_dim=dims.head_dim, resnet_time_scale_shift="scale_shift",
        class_embed_type=None)


def decoder_pipeline(seed: int = 0, dims: Dims = TINY):
    """KandinskyV22Pipeline with a tiny random UNet (image-embedding conditioning) and MoVQ."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, VQModel

    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    unet = tiny_unet(dims=dims)
    levels = len(dims.movq)
    movq = VQModel(
        block_out_channels=list(dims.movq),
        down_block_types=["DownEncoderBlock2D"] * (levels - 1) + ["AttnDownEncoderBlock2D"],
        in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
        num_vq_embeddings=12, out_channels=3,
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * (levels - 1), vq_embed_dim=4)
    return KandinskyV22Pipeline(unet=_wake(unet, gen), scheduler=DDPMScheduler(**DECODER_SCHEDULER),
                                movq=_wake(movq, gen))


def inpaint_pipeline(movq: nn.Module, seed: int = 0, dims: Dims = TINY):
    """KandinskyV22InpaintPipeline: a tiny random UNet with 9 input channels (latents, masked
    image latents, mask) and the decoder's MoVQ (the real snapshots share it)."""
    from diffusers import DDPMScheduler, KandinskyV22InpaintPipeline

    gen = torch.Generator().manual_seed(seed + 2)
    torch.manual_seed(seed + 2)
    return KandinskyV22InpaintPipeline(unet=_wake(tiny_unet(in_channels=9, dims=dims), gen),
                                       scheduler=DDPMScheduler(**DECODER_SCHEDULER), movq=movq)


def write_model_dir(root: Path, seed: int = 0, inpaint: bool = False, dims: Dims = TINY) -> Path:
    """root/prior and root/decoder (and root/decoder-inpaint), as the Hugging Face snapshots
    lay them out."""
    prior_pipeline(root / "tmp", seed, dims).save_pretrained(root / "prior")
    decoder = decoder_pipeline(seed, dims)
    decoder.save_pretrained(root / "decoder")
    if inpaint:
        inpaint_pipeline(decoder.movq, seed, dims).save_pretrained(root / "decoder-inpaint")
    return root
