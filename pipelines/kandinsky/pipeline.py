"""Kandinsky 2.2 behind the operation API: text -> CLIP text encoding -> prior (image
embedding, diffusers' PriorTransformer) -> latent decoder (UNet2DConditionModel) -> MoVQ.

Stages: "prior", "decoder" (latents), "movq" (latents -> pixels); the engine and
`run_direct` / `run_many` batch their steps across requests like unCLIP's. The numerics
follow diffusers' KandinskyV22PriorPipeline and KandinskyV22Pipeline (see
tests/pipelines/test_kandinsky.py).

The paper's manipulations (pipelines/operations.py) work on (z_i, x_T) with x_T the
decoder's latents: images are MoVQ-encoded (VQModel.encode, as diffusers' img2img and
inpainting pipelines prepare image latents) and DDIM-inverted in latent space under their
own CLIP image embedding. Inpainting constrains the latents (KandinskyV22InpaintPipeline's
mask and re-noising conventions), with the decoder-inpaint/ UNet where the folder has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Generator, Optional, Sequence

import torch
import torch.nn.functional as F

from ..clip import TextEncoding
from ..sampling import Known, Stage, Track, inversion_pairs, resize
from ..stage_keys import DECODER, MOVQ
from ..unclip import Sampling, StagedPipeline, StageRequest, _default
from .imageprep import ImagePrep
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
        self.image_prep = ImagePrep.from_config(nets.image_processor, nets.image_encoder.config.image_size)
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

    @property
    def device(self) -> torch.device:
        return self.nets.device

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """The tokenizer's ids of each text, start and end included, untruncated."""
        return [len(ids) for ids in self.nets.tokenizer(list(texts), truncation=False).input_ids]

    @property
    def context_length(self) -> int:
        return int(self.nets.tokenizer.model_max_length)

    @property
    def image_tokens(self) -> int:
        """The vision tower's patches plus its class token."""
        cfg = self.nets.image_encoder.config
        return (cfg.image_size // cfg.patch_size) ** 2 + 1

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

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> image embeddings [B, D] fp32, preprocessed as the
        snapshot's CLIPImageProcessor would (`ImagePrep`)."""
        return self.encode_image_normalized(self.image_prep(images.to(self.nets.device)))

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
        self, z: torch.Tensor, text: TextEncoding, gens: list[torch.Generator], opts: Sampling, count: int,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
        negative: Optional[TextEncoding] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Image embeddings z [n, D] -> images [n, 3, S, S] in [-1, 1], S = sizes[count]
        (text and negative are unused: Kandinsky 2.2's decoder sees the image embedding
        only). x_t [n, C, S/s, S/s]: start latents (see `decoder_tracks`); known: pixels."""
        latents = yield from self.decode_latents(z, gens, opts, self.sizes[count], x_t, known)
        return (yield from self.to_pixels(latents))

    def render_work(self, count: int, opts: Sampling, resample: int = 1) -> dict[str, int]:
        """One MoVQ decode per image."""
        return {MOVQ: 1}

    def noise_shape(self, count: int) -> tuple[int, ...]:
        side = self.sizes[count] // self.nets.movq_scale
        return (1, self.nets.latent_channels, side, side)

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """Images [n, 3, H, W] in [-1, 1] -> MoVQ latents [n, C, size/s, size/s] fp32 (resized
        to size first; VQModel.encode's unquantized latents, as diffusers' img2img and
        inpainting pipelines take them)."""
        movq = self.nets.movq
        x = resize(images.float(), size).to(self.nets.device, movq.dtype)
        return movq.encode(x).latents.float()

    def invert_image(
        self, image: torch.Tensor, z: torch.Tensor, opts: Sampling, count: int
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """The images' MoVQ latents at sizes[count], DDIM-inverted under their z."""
        return (yield from self.invert(self.encode_latents(image, self.sizes[count]), z, opts))

    def invert(
        self, latents: torch.Tensor, z: torch.Tensor, opts: Sampling, steps: Optional[int] = None
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """DDIM-invert clean latents [n, C, h, w] through the decoder conditioned on image
        embeddings z [n, D] (guided against the zero image's, as sampling is). Returns x_T
        [n, C, h, w] from which `decode_latents` with x_t (DDIM, eta 0) returns to them."""
        stage = self.stages[DECODER]
        pairs = inversion_pairs(self.timesteps(DECODER, opts, invertible=True, steps=steps))
        guidance = _default(opts.decoder_guidance, stage.cfg.guidance)
        tracks = [Track(latents[i:i + 1].float(), list(pairs), "invert", guidance=guidance,
                        cond={"image_emb": z[i:i + 1]}, refine=opts.inversion_refine)
                  for i in range(latents.shape[0])]
        yield StageRequest(DECODER, tracks)
        return torch.cat([tr.x for tr in tracks])

    def to_pixels(self, latents: torch.Tensor) -> Generator[StageRequest, None, torch.Tensor]:
        """Latents [n, C, h, w] -> images [n, 3, h s, w s] in [-1, 1] (MoVQ)."""
        tracks = [MovqStage.track(latents[i:i + 1]) for i in range(latents.shape[0])]
        yield StageRequest(MOVQ, tracks)
        return torch.cat([tr.x for tr in tracks]).clamp(-1, 1)

    def decoder_tracks(
        self, z: torch.Tensor, gens: list[torch.Generator], opts: Sampling, size: int,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
    ) -> list[Track]:
        """Latent decoder tracks for image embeddings z [n, D] at output size `size`. x_t
        [n, C, h, w] starts them from given latents (inversion, on the invertible
        timesteps) instead of noise; known[i] (pixels, any size) constrains track i in
        latent space (`latent_known`), and with an inpainting decoder also feeds it."""
        stage = self.stages[DECODER]
        pairs = stage.pairs(self.timesteps(DECODER, opts, invertible=x_t is not None))
        guidance = _default(opts.decoder_guidance, stage.cfg.guidance)
        sampler = opts.decoder_sampler or stage.cfg.sampler
        side = size // self.nets.movq_scale
        shape = (1, self.nets.latent_channels, side, side)
        encoded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # one MoVQ encode per distinct constraint
        tracks = []
        for i, g in enumerate(gens):
            x = x_t[i:i + 1].float() if x_t is not None else self._init(opts, DECODER, i, shape, g)
            cond, k = {"image_emb": z[i:i + 1]}, None
            if known:
                key = id(known[i])
                if key not in encoded:
                    encoded[key] = self.latent_known(known[i], size)
                x0, keep = encoded[key]
                k = Known(x0, keep, known[i].resample, noise=x)  # re-noised with the initial latents
                if self.nets.inpaint_unet is not None:
                    cond |= {"masked_latents": x0 * keep, "keep": keep}
            tracks.append(Track(x, list(pairs), sampler, opts.eta, guidance, g, cond, k))
        return tracks

    def latent_known(self, known: Known, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A pixel constraint at output size `size` in latent space, as KandinskyV22InpaintPipeline
        prepares it: the image's MoVQ latents [1, C, h, w] and the keep mask [1, 1, h, w]
        (nearest-resized, then eroded by one latent cell: `erode_keep`)."""
        side = size // self.nets.movq_scale
        keep = F.interpolate(known.keep.float(), size=(side, side), mode="nearest")
        return self.encode_latents(known.x0, size), erode_keep(keep).to(self.nets.device)

    def decode_latents(
        self, z: torch.Tensor, gens: list[torch.Generator], opts: Sampling, size: int,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Image embeddings z [n, D] -> final latents [n, C, size / s, size / s] (see
        `decoder_tracks` for x_t and known)."""
        tracks = self.decoder_tracks(z, gens, opts, size, x_t, known)
        yield StageRequest(DECODER, tracks)
        return torch.cat([tr.x for tr in tracks])


def erode_keep(keep: torch.Tensor) -> torch.Tensor:
    """keep [B, 1, h, w] (1 = keep) with every cell next to a repainted one repainted too:
    diffusers' Kandinsky `prepare_mask` (neighbours up, down, left, right and along the main
    diagonal; not the anti-diagonal), vectorized."""
    h, w = keep.shape[-2:]
    padded = F.pad(keep, (1, 1, 1, 1), value=1.0)
    out = keep
    for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1)):
        out = torch.minimum(out, padded[..., 1 + di:1 + di + h, 1 + dj:1 + dj + w])
    return out
