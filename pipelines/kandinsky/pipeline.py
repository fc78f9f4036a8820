"""Kandinsky 2.2 behind the operation API: text -> CLIP text encoding -> prior (image
embedding, diffusers' PriorTransformer) -> latent decoder (UNet2DConditionModel) -> MoVQ.

Stages: "prior", "decoder" (latents), "movq" (latents -> pixels); the engine and
`run_direct` / `run_many` batch their steps across requests like unCLIP's. The numerics
follow diffusers' KandinskyV22PriorPipeline and KandinskyV22Pipeline (see
tests/pipelines/test_kandinsky.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Generator, Optional, Sequence

import torch

from ..clip import TextEncoding
from ..sampling import Stage, Track
from ..stage_keys import DECODER, MOVQ
from ..unclip import Sampling, StagedPipeline, StageRequest, _default
from .networks import KandinskyNets, load_kandinsky
from .stages import KandinskyPriorStage, LatentDecoderStage, MovqStage


class Kandinsky(StagedPipeline):
    """Loaded Kandinsky networks plus their stages. sizes: the square output sizes served,
    each a multiple of movq_scale ** 2 (as diffusers rounds sizes); default: the decoder's
    configured size (512 for Kandinsky 2.2)."""

    def __init__(self, nets: KandinskyNets, sizes: Optional[Sequence[int]] = None):
        self.nets = nets
        self._sizes = tuple(sorted(sizes or (nets.native_size,)))
        unit = nets.movq_scale ** 2
        if any(s % unit for s in self._sizes):
            raise ValueError(f"Kandinsky sizes must be multiples of {unit}, got {list(self._sizes)}")
        null = self.encode_text([""])
        self.null_text = {"text_emb": null.pooled, "text_enc": null.states, "mask": null.mask}
        self.zero_image_emb = self.encode_image_normalized(self.zero_image())
        stages = [KandinskyPriorStage(nets, self.null_text), LatentDecoderStage(nets, self.zero_image_emb),
                  MovqStage(nets)]
        self.stages: dict[str, Stage | MovqStage] = {stage.key: stage for stage in stages}

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             sizes: Optional[Sequence[int]] = None) -> "Kandinsky":
        return cls(load_kandinsky(path, device, dtype), sizes)

    @property
    def sizes(self) -> tuple[int, ...]:
        return self._sizes

    @property
    def prior_dim(self) -> int:
        return self.nets.embed_dim

    # ---- CLIP ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> TextEncoding:
        """texts -> pooled [B, D] (text_embeds), states [B, T, W], mask [B, T] (the tokenizer's
        attention mask, padded to its model_max_length), fp32 on the networks' device."""
        tok = self.nets.tokenizer
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        dev = self.nets.device
        out = self.nets.text_encoder(ids.input_ids.to(dev))
        return TextEncoding(out.text_embeds.float(), out.last_hidden_state.float(), ids.attention_mask.bool().to(dev))

    def zero_image(self) -> torch.Tensor:
        """The all-zero image [1, 3, R, R] in the image encoder's (normalized) input space."""
        side = self.nets.image_encoder.config.image_size
        return torch.zeros(1, 3, side, side)

    @torch.no_grad()
    def encode_image_normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image-encoder inputs [B, 3, R, R] (already resized and normalized) -> image
        embeddings [B, D] fp32."""
        enc = self.nets.image_encoder
        return enc(pixels.to(self.nets.device, enc.dtype)).image_embeds.float()

    def denormalize_image_emb(self, z: torch.Tensor) -> torch.Tensor:
        """PriorTransformer.post_process_latents: z * clip_std + clip_mean."""
        prior = self.nets.prior
        return prior.post_process_latents(z.to(self.nets.device, prior.dtype)).float()

    # ---- decoder and MoVQ ------------------------------------------------------------------

    def render(
        self, z: torch.Tensor, text: TextEncoding, gens: list[torch.Generator], opts: Sampling, count: int
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Image embeddings z [n, D] -> images [n, 3, S, S] in [-1, 1], S = sizes[count]
        (text is unused: Kandinsky 2.2's decoder sees the image embedding only)."""
        latents = yield from self.decode_latents(z, gens, opts, self.sizes[count])
        return (yield from self.to_pixels(latents))

    def to_pixels(self, latents: torch.Tensor) -> Generator[StageRequest, None, torch.Tensor]:
        """Latents [n, C, h, w] -> images [n, 3, h s, w s] in [-1, 1] (MoVQ)."""
        tracks = [MovqStage.track(latents[i:i + 1]) for i in range(latents.shape[0])]
        yield StageRequest(MOVQ, tracks)
        return torch.cat([tr.x for tr in tracks]).clamp(-1, 1)

    def decoder_tracks(self, z: torch.Tensor, gens: list[torch.Generator], opts: Sampling, size: int) -> list[Track]:
        """Latent decoder tracks for image embeddings z [n, D] at output size `size`."""
        stage = self.stages[DECODER]
        pairs = stage.pairs(self.timesteps(DECODER, opts))
        guidance = _default(opts.decoder_guidance, stage.cfg.guidance)
        sampler = opts.decoder_sampler or stage.cfg.sampler
        side = size // self.nets.movq_scale
        shape = (1, self.nets.latent_channels, side, side)
        return [Track(self._init(opts, DECODER, i, shape, g), list(pairs), sampler, opts.eta, guidance, g,
                      {"image_emb": z[i:i + 1]}) for i, g in enumerate(gens)]

    def decode_latents(
        self, z: torch.Tensor, gens: list[torch.Generator], opts: Sampling, size: int
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Image embeddings z [n, D] -> final latents [n, C, size / s, size / s]."""
        tracks = self.decoder_tracks(z, gens, opts, size)
        yield StageRequest(DECODER, tracks)
        return torch.cat([tr.x for tr in tracks])
