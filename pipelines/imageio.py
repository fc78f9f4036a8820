"""Image decoding and encoding at the pipeline boundary: bytes <-> tensors in [-1, 1].

Checks happen before any work: allowed formats, a pixel limit against decompression bombs,
mask size and transparency.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .errors import InvalidInput

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PIXELS = 4096 * 4096


def open_image(data: bytes, param: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes to a PIL image, refusing other formats and oversized images."""
    if not data:
        raise InvalidInput(param, f"'{param}' is empty")
    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ALLOWED_FORMATS:
            raise InvalidInput(param, f"'{param}' must be PNG, JPEG or WEBP, got {img.format}", "invalid_image_format")
        if img.width * img.height > max_pixels:
            raise InvalidInput(param, f"'{param}' has {img.width}x{img.height} pixels, more than {max_pixels}",
                               "image_too_large")
        img.load()
    except InvalidInput:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = "truncated or corrupt" if _recognised(err) else "not a PNG, JPEG or WEBP file"
        raise InvalidInput(param, f"'{param}' is not a decodable image: {reason}", "invalid_image") from err
    return img


def _recognised(err: Exception) -> bool:
    """Whether a decode error came after the format was recognised (PIL's "cannot identify
    image file <object at 0x...>" did not; its text names a memory address, never shown)."""
    return "cannot identify image file" not in str(err)


def reduce(img: Image.Image, side: int) -> Image.Image:
    """The image with its longer side at most `side` (Lanczos, aspect kept); as is when smaller."""
    if max(img.size) <= side:
        return img
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> RGB tensor [1, 3, H, W] uint8 (alpha dropped): a fourth of float32's
    memory, for inputs that wait in the queue (`as_float` converts them when they run)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))[None])


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W]: uint8 (0..255) -> float32 in [-1, 1]; float images as they are."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> RGB tensor [1, 3, H, W] in [-1, 1] (alpha dropped).

    The arithmetic is numpy's, as in `to_uint8`: the server calls these on request threads,
    and a torch op there would give that thread an OpenMP pool of its own, which slows the
    engine thread's steps about 2x on a 2-core host (see server/engine/core.py)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))[None])


def alpha_of(img: Image.Image) -> Optional[np.ndarray]:
    """Alpha channel [H, W] uint8, or None if the image has no transparency information."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        return np.asarray(img.convert("RGBA"))[..., 3]
    return None


def keep_mask(image: Image.Image, mask: Optional[Image.Image], param: str = "mask") -> torch.Tensor:
    """The OpenAI edits convention: alpha 0 = area to edit. Returns keep [1, 1, H, W]
    (1 = keep the original pixel). Without a mask, the image's own alpha is the mask."""
    source = mask if mask is not None else image
    name = param if mask is not None else "image"
    if mask is not None and mask.size != image.size:
        raise InvalidInput(param, f"'{param}' is {mask.size[0]}x{mask.size[1]} "
                                  f"but the image is {image.size[0]}x{image.size[1]}")
    alpha = alpha_of(source)
    if alpha is None:
        raise InvalidInput(name, f"'{name}' has no alpha channel: transparent pixels (alpha 0) mark the area to edit")
    keep = torch.from_numpy((alpha > 0).astype(np.float32))
    return keep[None, None]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    x = images.detach().cpu().numpy().astype(np.float32, copy=False)  # numpy arithmetic: see to_tensor
    x = np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
