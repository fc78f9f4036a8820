"""CLIPImageProcessor's preprocessing (resize, centre crop, CLIP normalisation) in torch, on
images [B, 3, H, W] in [-1, 1], as a snapshot's preprocessor_config.json sets it up.

transformers' processor works on PIL images / numpy arrays of uint8; on the same image this
gives its pixel_values within fp32 rounding when no resize is needed, and within its resize's
rounding otherwise (see tests/pipelines/test_kandinsky_ops.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from .clip import OPENAI_MEAN, OPENAI_STD


def _pair(value: Any, default: int) -> tuple[Optional[int], Optional[tuple[int, int]]]:
    """A size entry -> (shortest edge, None) or (None, (height, width))."""
    if value is None:
        return default, None
    if isinstance(value, int):
        return value, None
    if "shortest_edge" in value:
        return int(value["shortest_edge"]), None
    return None, (int(value["height"]), int(value["width"]))


@dataclass(frozen=True)
class ImagePrep:
    """shortest_edge or hw: the resize (None: none); crop (height, width) or None; mean, std."""

    shortest_edge: Optional[int]
    hw: Optional[tuple[int, int]]
    crop: Optional[tuple[int, int]]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], image_size: int) -> "ImagePrep":
        """From a preprocessor_config.json (CLIPImageProcessor's keys; missing ones: its
        defaults, at the vision tower's image_size)."""
        edge, hw = _pair(cfg.get("size"), image_size) if cfg.get("do_resize", True) else (None, None)
        crop = None
        if cfg.get("do_center_crop", True):
            c_edge, c_hw = _pair(cfg.get("crop_size"), image_size)
            crop = c_hw or (c_edge, c_edge)
        mean, std = (tuple(cfg.get("image_mean", OPENAI_MEAN)), tuple(cfg.get("image_std", OPENAI_STD))) \
            if cfg.get("do_normalize", True) else ((0.0,) * 3, (1.0,) * 3)
        return cls(edge, hw, crop, mean, std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> the vision tower's inputs [B, 3, h, w] (fp32)."""
        x = (images.float().clamp(-1, 1) + 1) / 2
        h, w = x.shape[-2:]
        size = self.hw
        if self.shortest_edge is not None:  # transformers' get_resize_output_image_size
            short, long = min(h, w), max(h, w)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            size = (new_long, new_short) if w <= h else (new_short, new_long)
        if size is not None and tuple(size) != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        if self.crop is not None:
            h, w = x.shape[-2:]
            ch, cw = self.crop
            if ch > h or cw > w:
                raise ValueError(f"centre crop {self.crop} is larger than the resized image {(h, w)}")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std
