"""The UNet of the decoder and of the upsamplers (GLIDE / guided-diffusion lineage).

Parameter names follow Karlo's, so `input_blocks.N.M...`, `middle_block`, `output_blocks`,
`out`, `time_embed`, and on the decoder `clip_emb`, `text_feat_proj`, `clip_tok_proj`,
`text_seq_proj`, `cf_param`. Conv-only upsamplers set `clip_dim=None`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .config import UNetConfig
from .layers import GroupNorm32, LayerNorm32, timestep_embedding


class Cond:
    """What every block may read: timestep embedding, encoder tokens and their mask.

    emb: [B, E]; tokens: [B, C_enc, S] or None; bias: [B, 1, 1, S] additive or None.
    """

    def __init__(self, emb: torch.Tensor, tokens: Optional[torch.Tensor], bias: Optional[torch.Tensor]):
        self.emb, self.tokens, self.bias = emb, tokens, bias


class ResBlock(nn.Module):
    """Residual block with timestep conditioning; optional up/down sampling inside."""

    def __init__(self, ch: int, emb_ch: int, out_ch: int, cfg: UNetConfig, up: bool = False, down: bool = False):
        super().__init__()
        self.scale_shift = cfg.use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(cfg.norm_groups, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.up, self.down = up, down
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if self.scale_shift else out_ch))
        self.out_layers = nn.Sequential(
            GroupNorm32(cfg.norm_groups, out_ch), nn.SiLU(), nn.Dropout(cfg.dropout),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: [B, ch, H, W] -> [B, out_ch, H', W']."""
        norm, act, conv = self.in_layers  # unpacked, not sliced: a slice builds a new Sequential
        h = conv(self._resample(act(norm(x))))
        x = self._resample(x)
        emb = self.emb_layers(cond.emb).to(h.dtype)[..., None, None]
        norm, act, drop, conv = self.out_layers
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = norm(h) * (1 + scale) + shift
        else:
            h = norm(h + emb)
        return self.skip_connection(x) + conv(drop(act(h)))


class AttentionBlock(nn.Module):
    """Spatial self-attention whose keys/values are preceded by the encoder tokens'."""

    def __init__(self, ch: int, cfg: UNetConfig):
        super().__init__()
        self.heads = max(1, ch // cfg.num_head_channels)
        self.norm = GroupNorm32(cfg.norm_groups, ch)
        self.qkv = nn.Conv1d(ch, ch * 3, 1)
        self.encoder_kv = nn.Conv1d(cfg.xf_width, ch * 2, 1) if cfg.is_decoder else None
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def _heads(self, x: torch.Tensor, conv: nn.Conv1d, parts: int) -> list[torch.Tensor]:
        """x: [B, L, C_in] tokens-last -> `parts` tensors [B, heads, L, D].

        The 1x1 conv runs as a linear layer on the tokens-last layout, whose output channels
        are laid out per head ([heads, parts, D], Karlo's order); the per-head views then keep
        D contiguous, which SDPA's fast CPU path needs."""
        b, length, _ = x.shape
        y = F.linear(x, conv.weight.squeeze(-1), conv.bias)  # [B, L, heads*parts*D]
        y = y.view(b, length, self.heads, parts, -1).permute(3, 0, 2, 1, 4)
        return list(y.unbind(0))

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        b, c, hgt, wid = x.shape
        tokens = self.norm(x).view(b, c, -1).transpose(1, 2)  # [B, L, C]
        q, k, v = self._heads(tokens, self.qkv, 3)
        bias = None
        if self.encoder_kv is not None and cond.tokens is not None:
            ek, ev = self._heads(cond.tokens.to(x.dtype).transpose(1, 2), self.encoder_kv, 2)
            k, v = torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2)
            if cond.bias is not None:
                bias = F.pad(cond.bias, (0, hgt * wid), value=0.0)
        h = attention(q, k, v, bias).transpose(1, 2).reshape(b, hgt * wid, c)  # [B, L, C]
        out = F.linear(h, self.proj_out.weight.squeeze(-1), self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(b, c, hgt, wid)


class Sequential(nn.ModuleList):
    """A list of layers where each one gets the conditioning it needs."""

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        for layer in self:
            x = layer(x, cond) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


def inpaint_condition(x0: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """An inpainting decoder's extra input (GLIDE): x0 [B, 3, H, W] in [-1, 1] and keep
    [B, 1, H, W] (1 = known pixel) -> [B, 4, H, W], the known pixels (0 elsewhere) and keep."""
    return torch.cat([x0 * keep, keep], dim=1)


class UNet(nn.Module):
    """GLIDE-style UNet. Decoder: conditioned on CLIP image embedding and text; upsampler:
    conditioned on the upsampled low-resolution image concatenated to x_t."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_ch = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if cfg.is_decoder:
            self._init_conditioning(cfg, emb_ch)
        self.input_blocks, chans = self._build_input(cfg, emb_ch)
        ch = chans[-1]
        middle = [ResBlock(ch, emb_ch, ch, cfg)]
        if cfg.attention_ds:
            middle.append(AttentionBlock(ch, cfg))
        self.middle_block = Sequential(middle + [ResBlock(ch, emb_ch, ch, cfg)])
        self.output_blocks, ch = self._build_output(cfg, emb_ch, chans)
        self.out = nn.Sequential(GroupNorm32(cfg.norm_groups, ch), nn.SiLU(),
                                 nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def _init_conditioning(self, cfg: UNetConfig, emb_ch: int) -> None:
        self.clip_emb = nn.Linear(cfg.clip_dim, emb_ch)
        self.text_feat_proj = nn.Linear(cfg.clip_dim, emb_ch)
        self.clip_tok_proj = nn.Linear(cfg.clip_dim, cfg.xf_width * cfg.clip_tokens)
        self.text_seq_proj = nn.Sequential(nn.Linear(cfg.text_width or cfg.clip_dim, cfg.xf_width),
                                           LayerNorm32(cfg.xf_width))
        self.cf_param = nn.Parameter(torch.randn(cfg.clip_dim) * 0.02)

    def _build_input(self, cfg: UNetConfig, emb_ch: int) -> tuple[nn.ModuleList, list[int]]:
        mc = cfg.model_channels
        blocks = nn.ModuleList([Sequential([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb_ch, mult * mc, cfg)]
                ch = mult * mc
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg))
                blocks.append(Sequential(layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                blocks.append(Sequential([self._resampler(ch, emb_ch, cfg, down=True)]))
                chans.append(ch)
                ds *= 2
        return blocks, chans

    def _build_output(self, cfg: UNetConfig, emb_ch: int, chans: list[int]) -> tuple[nn.ModuleList, int]:
        mc = cfg.model_channels
        blocks, ch, chans = nn.ModuleList(), chans[-1], list(chans)
        ds = 2 ** (len(cfg.channel_mult) - 1)
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb_ch, mc * mult, cfg)]
                ch = mc * mult
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg))
                if level and i == cfg.num_res_blocks:
                    layers.append(self._resampler(ch, emb_ch, cfg, down=False))
                    ds //= 2
                blocks.append(Sequential(layers))
        return blocks, ch

    @staticmethod
    def _resampler(ch: int, emb_ch: int, cfg: UNetConfig, down: bool) -> ResBlock:
        if not cfg.resblock_updown:
            raise NotImplementedError("only resblock up/down sampling is implemented (Karlo's layout)")
        return ResBlock(ch, emb_ch, ch, cfg, up=not down, down=down)

    def conditioning(
        self,
        timesteps: torch.Tensor,
        image_emb: Optional[torch.Tensor] = None,
        text_emb: Optional[torch.Tensor] = None,
        text_enc: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> Cond:
        """timesteps: [B]; image_emb, text_emb: [B, clip_dim]; text_enc: [B, T, clip_dim];
        mask: [B, T] bool. Builds the timestep embedding and encoder tokens [B, xf_width, 4 + T]."""
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.cfg.model_channels).to(dtype))
        if not self.cfg.is_decoder:
            return Cond(emb, None, None)
        b = timesteps.shape[0]
        emb = emb + self.clip_emb(image_emb.to(dtype)) + self.text_feat_proj(text_emb.to(dtype))
        clip_tokens = self.clip_tok_proj(image_emb.to(dtype)).reshape(b, -1, self.cfg.clip_tokens)
        text_tokens = self.text_seq_proj(text_enc.to(dtype)).permute(0, 2, 1)
        tokens = torch.cat([clip_tokens, text_tokens], dim=2)
        keep = F.pad(mask.bool(), (self.cfg.clip_tokens, 0), value=True)
        bias = torch.zeros(keep.shape, device=keep.device).masked_fill(~keep, float("-inf"))
        return Cond(emb, tokens, bias[:, None, None, :])

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        image_emb: Optional[torch.Tensor] = None,
        text_emb: Optional[torch.Tensor] = None,
        text_enc: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        low_res: Optional[torch.Tensor] = None,
        inpaint: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: [B, C, H, W] noised image; low_res (upsamplers): [B, C_lr, H, W], already
        resized to H x W; inpaint (inpainting decoders): [B, 4, H, W], the kept pixels and
        the keep mask (`inpaint_condition`), None = nothing kept. Returns the model output
        [B, out_channels, H, W] in fp32, contiguous whatever the UNet's memory format: the
        sampler's elementwise math on a channels-last operand (sliced to the prediction's
        channels, not even dense) ran 3x slower per op than on contiguous ones."""
        cond = self.conditioning(timesteps, image_emb, text_emb, text_enc, mask)
        h = x if low_res is None else torch.cat([x, low_res.to(x.dtype)], dim=1)
        if self.cfg.inpaint_channels:
            if inpaint is None:  # nothing kept
                inpaint = x.new_zeros((x.shape[0], self.cfg.inpaint_channels) + tuple(x.shape[2:]))
            h = torch.cat([h, inpaint.to(x.dtype)], dim=1)
        h = h.to(self.time_embed[0].weight.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, cond)
            skips.append(h)
        h = self.middle_block(h, cond)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
        return self.out(h).to(torch.float32, memory_format=torch.contiguous_format)
