"""Kandinsky 2.2's stages: our prior and decoder stages (batching, guidance, samplers) over
diffusers' networks, and MoVQ decoding of finished latents as a one-step stage.

Tracks hold fp32 state; the networks get their inputs in their own dtype and return fp32.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..sampling import DecoderStage, PriorStage, Stage, Track
from ..stage_keys import MOVQ
from .networks import KandinskyNets, dtype_of


class KandinskyPriorStage(PriorStage):
    """The prior: tracks hold the prior's samples [1, D] (diffusers' PriorTransformer space,
    before `post_process_latents`); cond and `null` as PriorStage's (text_emb [1, D],
    text_enc [1, T, W], mask [1, T]); guidance against the encoding of ""."""

    def __init__(self, nets: KandinskyNets, null_text: dict[str, torch.Tensor]):
        Stage.__init__(self, nets, nets.prior_cfg, nets.prior_schedule)  # the networks are diffusers'
        self.null = null_text

    def network(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        prior = self.stack.prior
        dt = dtype_of(prior)
        return prior(x.to(dt), timestep=t, proj_embedding=cond["text_emb"].to(dt),
                     encoder_hidden_states=cond["text_enc"].to(dt),
                     attention_mask=cond["mask"]).predicted_image_embedding.float()


class LatentDecoderStage(DecoderStage):
    """The latent decoder: tracks hold latents [1, C, h, w]; cond: image_emb [1, D]. The
    unconditional rows get the embedding of the all-zero image (diffusers' negative image
    embedding); a learned-variance output's variance channels come from the conditional rows.
    Inpainting tracks (cond also holds masked_latents [1, C, h, w] and keep [1, 1, h, w]) run
    the inpainting UNet on [latents, masked_latents, keep], as KandinskyV22InpaintPipeline
    does; their cond keys keep them out of other tracks' batches (`group_key`)."""

    def __init__(self, nets: KandinskyNets, zero_image_emb: torch.Tensor):
        Stage.__init__(self, nets, nets.decoder_cfg, nets.decoder_schedule)  # the networks are diffusers'
        self.null = {"image_emb": zero_image_emb}

    def null_cond(self) -> dict[str, torch.Tensor]:
        return self.null

    def network(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor],
                inpaint: Optional[torch.Tensor]) -> torch.Tensor:
        unet = self.stack.unet if inpaint is None else self.stack.inpaint_unet
        if inpaint is not None:
            x = torch.cat([x, inpaint.to(x)], dim=1)
        dt = dtype_of(unet)
        emb = cond["image_emb"].to(dt)
        out = unet(x.to(dt), t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb})
        return out.sample.float()

    def _inpaint(self, x: torch.Tensor, tracks: list[Track]) -> Optional[torch.Tensor]:
        """The inpainting UNet's extra input [B, C + 1, h, w] (masked latents, keep), or None
        for a batch of plain tracks."""
        if "keep" not in tracks[0].cond:
            return None
        return torch.cat([torch.cat([tr.cond["masked_latents"], tr.cond["keep"]], dim=1) for tr in tracks]).to(x)


class MovqStage:
    """Latents [1, C, h, w] -> pixels [1, 3, h s, w s] (s = `movq_scale`), unclamped: one
    batched VQModel.decode per step; each track has a single (0, -1) pair."""

    key = MOVQ

    def __init__(self, nets: KandinskyNets):
        self.stack = nets

    @staticmethod
    def track(latent: torch.Tensor) -> Track:
        """The track that decodes one latent [1, C, h, w]."""
        return Track(latent, [(0, -1)])

    @torch.no_grad()
    def step(self, tracks: list[Track]) -> None:
        movq = self.stack.movq
        x = torch.cat([tr.x for tr in tracks]).to(self.stack.device, dtype_of(movq))
        images = movq.decode(x, force_not_quantize=True).sample.float()
        for i, tr in enumerate(tracks):
            tr.x = images[i:i + 1]
            tr.index += 1
