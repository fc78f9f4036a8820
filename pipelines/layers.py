"""Small building blocks shared by the prior and the UNets (guided-diffusion lineage)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the activations' dtype, as upstream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_fp32(lambda v, w, b: F.group_norm(v, self.num_groups, w, b, self.eps), x, self.weight, self.bias)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activations' dtype, as upstream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_fp32(lambda v, w, b: F.layer_norm(v, self.normalized_shape, w, b, self.eps),
                        x, self.weight, self.bias)


Norm = Callable[[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]], torch.Tensor]


def _in_fp32(norm: Norm, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> torch.Tensor:
    """norm(x, weight, bias) computed in fp32, returned in x's dtype. Called natively where
    the kernel already computes in fp32: fp32 itself, and on the CPU bf16 / fp16 with
    parameters of the same dtype (statistics and affine in fp32, one rounding at the end:
    the values of casting around it to within one rounding step, without the four copies
    a cast costs per call). Elsewhere (CUDA half, mixed dtypes) cast around it."""
    same = weight is None or weight.dtype == x.dtype
    if same and (x.dtype == torch.float32 or x.device.type == "cpu"):
        return norm(x, weight, bias)
    return norm(x.float(), _f32(weight), _f32(bias)).to(x.dtype)


def _f32(p: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
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
