"""The one attention function of the project: xformers on CUDA when it imports and runs,
else SDPA."""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

try:  # optional GPU extra
    import xformers.ops as _xops  # type: ignore
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _xops = None

_logged: set[str] = set()
_force_backend: Optional[str] = None


def set_backend(name: Optional[str]) -> None:
    """Force "xformers" or "sdpa" (None: automatic). Used by benchmarks."""
    global _force_backend
    if name not in (None, "xformers", "sdpa"):
        raise ValueError(f"unknown attention backend {name!r}")
    _force_backend = name


def backend_for(device: torch.device, dtype: torch.dtype = torch.float16) -> str:
    """The backend that `attention` uses on `device` for `dtype`: xformers where it imports
    and a first tiny call succeeds (a wheel built for another torch imports but has no
    kernels), else SDPA."""
    if _force_backend == "sdpa" or _xops is None or device.type != "cuda":
        return "sdpa"
    return "xformers" if _force_backend == "xformers" or _xformers_runs(device, dtype) else "sdpa"


_probed: dict[tuple[str, torch.dtype], bool] = {}


def _xformers_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """One [1, 8, 1, 64] call per device and dtype, remembered; a failure is logged once."""
    key = (str(device), dtype)
    if key not in _probed:
        try:
            x = torch.zeros(1, 8, 1, 64, device=device, dtype=dtype)
            _xops.memory_efficient_attention(x, x, x)
            _probed[key] = True
        except Exception as exc:  # noqa: BLE001 - any failure means "use SDPA"
            log.warning("xformers does not run on %s (%s): %s; attention uses SDPA", device, dtype, exc)
            _probed[key] = False
    return _probed[key]


def _log_once(name: str) -> None:
    if name not in _logged:
        _logged.add(name)
        log.info("attention backend: %s", name)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Scaled dot-product attention.

    q: [B, H, Lq, D]; k, v: [B, H, Lk, D]; bias: additive, broadcastable to [B, H, Lq, Lk]
    (0 to keep, -inf to mask). Returns [B, H, Lq, D].
    """
    name = backend_for(q.device, q.dtype)
    _log_once(name)
    if name == "xformers":
        return _xformers_attention(q, k, v, bias)
    if bias is not None:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _xformers_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """xformers wants [B, L, H, D] and a bias materialized at [B, H, Lq, Lk] (aligned to 8)."""
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    attn_bias = None
    if bias is not None:
        pad = (-lk) % 8
        full = torch.zeros(b, h, lq, lk + pad, dtype=q.dtype, device=q.device)
        full[..., :lk] = bias.to(q.dtype).expand(b, h, lq, lk)
        attn_bias = full[..., :lk]
    out = _xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=attn_bias
    )
    return out.transpose(1, 2)
