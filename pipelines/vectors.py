"""Vector helpers for manipulations of the bipartite latent: normalize and slerp."""

from __future__ import annotations

import torch


def normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit vectors over all non-batch dims: v [B, ...] -> v / |v|."""
    flat = v.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp(min=eps)).view_as(v)


def slerp(a: torch.Tensor, b: torch.Tensor, theta: float) -> torch.Tensor:
    """Spherical interpolation of directions with the norm interpolated linearly.

    a, b: [B, ...] (each row flattened). theta = 0 gives a, theta = 1 gives b; the result's
    norm is (1 - theta) |a| + theta |b|, its direction the great-circle point between them.
    """
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    na, nb = fa.norm(dim=1, keepdim=True), fb.norm(dim=1, keepdim=True)
    ua, ub = fa / na.clamp(min=1e-12), fb / nb.clamp(min=1e-12)
    omega = torch.arccos((ua * ub).sum(1, keepdim=True).clamp(-1.0, 1.0))
    so = torch.sin(omega)
    near = so.abs() < 1e-6  # (anti)parallel: fall back to linear interpolation of directions
    wa = torch.where(near, 1 - theta, torch.sin((1 - theta) * omega) / torch.where(near, 1.0, so))
    wb = torch.where(near, theta * torch.ones_like(so), torch.sin(theta * omega) / torch.where(near, 1.0, so))
    direction = normalize(wa * ua + wb * ub)
    out = direction * ((1 - theta) * na + theta * nb)
    return out.view_as(a).to(a.dtype)
