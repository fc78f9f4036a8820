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

import logging
from pathlib import Path
from typing import Any, Generator, Optional, Sequence

import torch
import torch.nn.functional as F

from ..attention import backend_for
from ..clip import TextEncoding
from ..hf_clip import HFClip
from ..sampling import Known, Stage, Track, inversion_pairs, latest, resize
from ..sizes import Output, Size, SizeRule
from ..stage_keys import DECODER, MOVQ
from ..unclip import Sampling, StagedPipeline, StageRequest, _default
from .networks import KandinskyNets, dtype_of, load_kandinsky
from .stages import KandinskyPriorStage, LatentDecoderStage, MovqStage

log = logging.getLogger(__name__)


class Kandinsky(StagedPipeline):
    """Loaded Kandinsky networks plus their stages. Output sizes (`size_rule`): any WxH on
    the grid of movq_scale ** 2 pixels (as diffusers rounds sizes) around the decoder's
    native size (512 for Kandinsky 2.2: 256 .. 1536 per side, aspect up to 3:1)."""

    def __init__(self, nets: KandinskyNets):
        self.nets = nets
        self._size_rule = kandinsky_sizes(nets.native_size, nets.movq_scale)
        self.clip = HFClip(nets.text_encoder, nets.tokenizer, nets.image_encoder, nets.image_processor)
        null = self.encode_text([""])
        self.null_text = {"text_emb": null.pooled, "text_enc": null.states, "mask": null.mask}
        self.zero_image_emb = self.clip.encode_normalized(self.clip.zero_image())
        stages = [KandinskyPriorStage(nets, self.null_text), LatentDecoderStage(nets, self.zero_image_emb),
                  MovqStage(nets)]
        self.stages: dict[str, Stage | MovqStage] = {stage.key: stage for stage in stages}

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "Kandinsky":
        return cls(load_kandinsky(path, device, dtype))

    def use_attention_backend(self) -> "Kandinsky":
        """diffusers' networks on the project's attention backend (pipelines/attention.py):
        with xformers where it runs on this device and dtype (CUDA), their xformers attention
        processors; else their own SDPA processors, as loaded."""
        nets = self.nets
        if backend_for(nets.device, dtype_of(nets.unet)) != "xformers":
            return self
        for net in (nets.prior, nets.unet, nets.inpaint_unet, nets.movq):
            if net is not None:
                net.enable_xformers_memory_efficient_attention()
        log.info("Kandinsky networks use xformers attention")
        return self

    def use_channels_last(self, enabled: bool = True) -> "Kandinsky":
        """The convolutional networks (decoder UNets, MoVQ) in channels-last memory format (or
        back), as `UnCLIPStack.use_channels_last` does for unCLIP's."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for net in (self.nets.unet, self.nets.inpaint_unet, self.nets.movq):
            if net is not None:
                net.to(memory_format=fmt)
        return self

    @property
    def size_rule(self) -> SizeRule:
        return self._size_rule

    def fingerprint(self) -> dict[str, Any]:
        nets = self.nets
        return {"prior": nets.prior.config, "unet": nets.unet.config, "movq": nets.movq.config,
                "device": str(nets.device), "dtype": str(dtype_of(nets.unet)),
                "channels_last": nets.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)}

    @property
    def prior_dim(self) -> int:
        return self.nets.embed_dim

    @property
    def device(self) -> torch.device:
        return self.nets.device

    def denormalize_image_emb(self, z: torch.Tensor) -> torch.Tensor:
        """PriorTransformer.post_process_latents: z * clip_std + clip_mean."""
        prior = self.nets.prior
        return prior.post_process_latents(z.to(self.nets.device, dtype_of(prior))).float()

    # ---- decoder and MoVQ ------------------------------------------------------------------

    def render(
        self, z: torch.Tensor, text: TextEncoding, gens: list[torch.Generator], opts: Sampling, out: Output,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
        negative: Optional[TextEncoding] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Image embeddings z [n, D] -> images [n, 3, H, W] in [-1, 1] at out's size
        (text and negative are unused: Kandinsky 2.2's decoder sees the image embedding
        only). x_t [n, C, H/s, W/s]: start latents (see `decoder_tracks`); known: pixels."""
        latents = yield from self.decode_latents(z, gens, opts, out.size, x_t, known)
        return (yield from self.to_pixels(latents))

    def render_work(self, out: Output, opts: Sampling, resample: int = 1) -> dict[str, int]:
        """One MoVQ decode per image."""
        return {MOVQ: 1}

    @torch.no_grad()
    def preview(self, stage: str, tracks: list[Track]) -> torch.Tensor:
        """Decoder tracks' latents so far (`latest`: clean-latent predictions), decoded by MoVQ:
        [n, 3, H, W] in [-1, 1] (one VQModel.decode of the batch)."""
        if stage != DECODER:
            return super().preview(stage, tracks)
        movq = self.nets.movq
        x = latest(tracks).to(self.nets.device, dtype_of(movq))
        return movq.decode(x, force_not_quantize=True).sample.float().cpu().clamp(-1, 1)

    def noise_shape(self, out: Output) -> tuple[int, ...]:
        return (1, self.nets.latent_channels, *self.latent_grid(out.size))

    def latent_grid(self, size: Size) -> tuple[int, int]:
        """(height, width) of the latents of an image of size (W, H)."""
        return size[1] // self.nets.movq_scale, size[0] // self.nets.movq_scale

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor, size: Size) -> torch.Tensor:
        """Images [n, 3, H', W'] in [-1, 1] -> MoVQ latents [n, C, H/s, W/s] fp32 of size (W, H)
        (resized to it first; VQModel.encode's unquantized latents, as diffusers' img2img and
        inpainting pipelines take them)."""
        movq = self.nets.movq
        x = resize(images.float(), size).to(self.nets.device, dtype_of(movq))
        return movq.encode(x).latents.float()

    def invert_image(
        self, image: torch.Tensor, z: torch.Tensor, opts: Sampling, out: Output
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """The images' MoVQ latents at out's size, DDIM-inverted under their z."""
        return (yield from self.invert(self.encode_latents(image, out.size), z, opts))

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
        self, z: torch.Tensor, gens: list[torch.Generator], opts: Sampling, size: Size,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
    ) -> list[Track]:
        """Latent decoder tracks for image embeddings z [n, D] at output size (W, H). x_t
        [n, C, h, w] starts them from given latents (inversion, on the invertible
        timesteps) instead of noise; known[i] (pixels, any size) constrains track i in
        latent space (`latent_known`), and with an inpainting decoder also feeds it."""
        stage = self.stages[DECODER]
        pairs = stage.pairs(self.timesteps(DECODER, opts, invertible=x_t is not None))
        guidance = _default(opts.decoder_guidance, stage.cfg.guidance)
        sampler = opts.decoder_sampler or stage.cfg.sampler
        shape = (1, self.nets.latent_channels, *self.latent_grid(size))
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

    def latent_known(self, known: Known, size: Size) -> tuple[torch.Tensor, torch.Tensor]:
        """A pixel constraint at output size (W, H) in latent space, as KandinskyV22InpaintPipeline
        prepares it: the image's MoVQ latents [1, C, h, w] and the keep mask [1, 1, h, w]
        (nearest-resized, then eroded by one latent cell: `erode_keep`)."""
        keep = F.interpolate(known.keep.float(), size=self.latent_grid(size), mode="nearest")
        return self.encode_latents(known.x0, size), erode_keep(keep).to(self.nets.device)

    def decode_latents(
        self, z: torch.Tensor, gens: list[torch.Generator], opts: Sampling, size: Size,
        x_t: Optional[torch.Tensor] = None, known: Optional[Sequence[Known]] = None,
    ) -> Generator[StageRequest, None, torch.Tensor]:
        """Image embeddings z [n, D] -> final latents [n, C, H / s, W / s] (see
        `decoder_tracks` for x_t and known)."""
        tracks = self.decoder_tracks(z, gens, opts, size, x_t, known)
        yield StageRequest(DECODER, tracks)
        return torch.cat([tr.x for tr in tracks])


def kandinsky_sizes(native: int, movq_scale: int) -> SizeRule:
    """The sizes of a Kandinsky decoder of native size `native` whose MoVQ scales by
    movq_scale: its latent grid is movq_scale ** 2 pixels (see `SizeRule.latent_grid`)."""
    return SizeRule.latent_grid(native, movq_scale ** 2)


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
