"""Small building blocks shared by the prior and the UNets (guided-diffusion lineage)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the activations' dtype, as upstream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _computes_in_fp32(x, self.weight):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(
            x.float(), self.num_groups, _f32(self.weight), _f32(self.bias), self.eps
        ).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activations' dtype, as upstream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _computes_in_fp32(x, self.weight):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return F.layer_norm(
            x.float(), self.normalized_shape, _f32(self.weight), _f32(self.bias), self.eps
        ).to(x.dtype)


def _computes_in_fp32(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """True where the native norm kernel already computes in fp32: fp32 itself, and on the
    CPU bf16 / fp16 with parameters of the same dtype (statistics and affine in fp32, one
    rounding at the end, the same values as casting around it to within an ulp, without
    the four copies a cast costs per call). Elsewhere (CUDA half) the explicit casts stay."""
    same = weight is None or weight.dtype == x.dtype
    return same and (x.dtype == torch.float32 or x.device.type == "cpu")


def _f32(p: torch.Tensor | None) -> torch.Tensor | None:
    return None if p is None else p.float()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of integer timesteps t: [B] -> [B, dim] (fp32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def split_heads_interleaved(qkv: torch.Tensor, heads: int, parts: int) -> list[torch.Tensor]:
    """Split a fused projection laid out per head ([h0: q k v][h1: q k v]...).

    qkv: [B, L, heads * parts * D] -> `parts` tensors of [B, heads, L, D].
    """
    b, length, width = qkv.shape
    d = width // (heads * parts)
    x = qkv.view(b, length, heads, parts, d).permute(3, 0, 2, 1, 4)
    return list(x.unbind(0))
