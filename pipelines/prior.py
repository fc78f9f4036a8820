"""The diffusion prior: a decoder-only transformer from text to CLIP image embedding.

Module tree and parameter names follow Karlo's `PriorTransformer`, so its checkpoints load
with `strict=True` after stripping the `model.` prefix.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .attention import attention
from .config import PriorConfig
from .layers import LayerNorm32, split_heads_interleaved, timestep_embedding

EXTRA_TOKENS = 4  # pooled text, timestep, noised image embedding, output token


class MultiheadAttention(nn.Module):
    """Self-attention with a fused, per-head interleaved qkv projection (`c_qkv`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, width * 3)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: [B, L, W]; bias: [B, 1, L, L] additive. Returns [B, L, W]."""
        q, k, v = split_heads_interleaved(self.c_qkv(x), self.heads, 3)
        out = attention(q, k, v, bias)  # [B, H, L, D]
        return self.c_proj(out.transpose(1, 2).reshape(x.shape))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, width * 4)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(width * 4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), bias)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, bias)
        return x


class PriorTransformer(nn.Module):
    """Predicts the (normalized) CLIP image embedding from text and a noised embedding."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        n_ctx = cfg.text_ctx + EXTRA_TOKENS
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.text_enc_proj = nn.Linear(cfg.text_width or cfg.clip_dim, w)
        self.text_emb_proj = nn.Linear(cfg.clip_dim, w)
        self.clip_img_proj = nn.Linear(cfg.clip_dim, w)
        self.out_proj = nn.Linear(w, cfg.clip_dim)
        self.transformer = Transformer(w, cfg.layers, cfg.heads)
        self.final_ln = LayerNorm32(w) if cfg.final_ln else None
        self.positional_embedding = nn.Parameter(torch.randn(1, n_ctx, w) * 0.01)
        self.prd_emb = nn.Parameter(torch.randn(1, 1, w) * 0.01)
        causal = torch.full((n_ctx, n_ctx), float("-inf")).triu_(1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        text_emb: torch.Tensor,
        text_enc: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """x: noised normalized image embedding [B, C]; timesteps: [B] ints;
        text_emb: pooled text [B, C]; text_enc: token states [B, T, C]; mask: [B, T] bool
        (True = real token). Returns the prediction [B, C]."""
        b = x.shape[0]
        dtype = self.text_enc_proj.weight.dtype
        t_emb = self.time_embed(timestep_embedding(timesteps, self.cfg.width).to(dtype))
        seq = torch.cat(
            [
                self.text_enc_proj(text_enc.to(dtype)),
                self.text_emb_proj(text_emb.to(dtype))[:, None],
                t_emb[:, None],
                self.clip_img_proj(x.to(dtype))[:, None],
                self.prd_emb.to(dtype).expand(b, -1, -1),
            ],
            dim=1,
        )
        seq = seq + self.positional_embedding.to(dtype)
        out = self.transformer(seq, self._bias(mask, dtype))
        if self.final_ln is not None:
            out = self.final_ln(out)
        return self.out_proj(out[:, -1]).float()

    def _bias(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Key padding on the text plus causal masking: [B, 1, L, L] additive."""
        keep = torch.nn.functional.pad(mask.bool(), (0, EXTRA_TOKENS), value=True)
        pad = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device)
        pad = pad.masked_fill(~keep, float("-inf"))
        return (pad[:, None, None, :] + self.causal_mask[None, None]).to(dtype)
