"""An invisible watermark in every image's pixels, which survives what strips metadata.

The XMP marker and a C2PA manifest say an image was generated, but any re-encode, screenshot
or upload to a site that strips metadata removes them. This mark lives in the pixels:

- **What is added.** A keyed pattern of 128 x 128 pixels, tiled over the image from its top
  left corner and added to each of R, G and B alike (a change of luminance only). The
  pattern is Gaussian noise from the key, kept to the spatial frequencies of 5 to 20 cycles
  per tile (periods of 6 to 26 pixels: coarse enough to outlive JPEG and halving the image,
  fine enough to stay apart from most of the image's own content), then scaled to a
  standard deviation of `STRENGTH` grey levels and rounded: PSNR 42 dB against the
  unmarked image.
- **How it is found.** The image's luminance, less its mean, is folded onto one tile (the
  sum of all its tiles, the last ones padded) and phase-correlated with the pattern over
  those frequencies: a marked image gives a sharp peak at the tile's offset. The score is
  that peak in standard deviations of the correlation over all offsets, so a crop (any
  offset) does not hide it. The image is also tried rescaled so that its long side is each
  of `SIDES`, which undoes rescaling between the server's sizes. Measured on the shipped
  model's images (`python -m bench.watermark`, docs/trust.md): an unmarked image scores
  about 3 to 5, a marked one 19 to 35, and above 10 after JPEG at quality 50, WEBP at 80,
  or halving a 1024 px image and then JPEG at 70. `THRESHOLD` lies between.

One key marks and finds: images marked with one are not found with another. The default key
is public, so anyone can check an image (and whoever knows a key can remove or forge its
mark: set your own, secret, with `UNCLIP_WATERMARK_KEY`, if that matters). Checking:
`python -m tools.watermark FILE...`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np
from PIL import Image

TILE = 128  # the pattern's period in pixels
BAND = (5.0, 20.0)  # cycles per tile the pattern holds, and that detection reads
STRENGTH = 2.0  # the pattern's standard deviation, in grey levels of 0..255
THRESHOLD = 8.0  # a score at or above it: marked
SIDES = (256, 512, 768, 1024, 1536)  # long sides an image is also tried at


@dataclass(frozen=True)
class Detection:
    """What `Watermark.detect` found: the best score, and the long side it was found at
    (None: the image as it is)."""

    score: float
    side: Optional[int] = None

    @property
    def marked(self) -> bool:
        return self.score >= THRESHOLD


@dataclass(frozen=True)
class Watermark:
    """The mark of one key."""

    key: str

    @cached_property
    def pattern(self) -> np.ndarray:
        """float64 [TILE, TILE]: the key's band-limited noise, standard deviation 1."""
        seed = int.from_bytes(hashlib.sha256(self.key.encode()).digest()[:8], "little")
        noise = np.random.default_rng(seed).standard_normal((TILE, TILE))
        pattern = np.fft.ifft2(np.fft.fft2(noise) * band_mask()).real
        return pattern / pattern.std()

    @cached_property
    def _added(self) -> np.ndarray:
        """int16 [TILE, TILE]: what marking adds to each channel, in grey levels."""
        return np.rint(STRENGTH * self.pattern).astype(np.int16)

    @cached_property
    def _spectrum(self) -> np.ndarray:
        """complex [TILE, TILE]: the pattern's phase over the band, 0 elsewhere."""
        spectrum = np.fft.fft2(self.pattern)
        return np.where(band_mask(), spectrum / np.maximum(np.abs(spectrum), 1e-12), 0)

    def mark(self, pixels: np.ndarray, where: Optional[np.ndarray] = None) -> np.ndarray:
        """uint8 [..., H, W, 3] -> the same, marked (the pattern tiled from the top left);
        `where`: bool [h, w] of any size, resized (nearest) to H x W: only those pixels."""
        if pixels.ndim > 3:  # one image at a time: a batch's int16 sum would take 2x its bytes
            return np.stack([self.mark(image, where) for image in pixels])
        h, w = pixels.shape[:2]
        added = np.tile(self._added, (-(-h // TILE), -(-w // TILE)))[:h, :w, None]
        if where is not None:
            rows, cols = np.arange(h) * where.shape[0] // h, np.arange(w) * where.shape[1] // w
            added = added * where[rows[:, None], cols[None, :], None]
        return np.clip(pixels.astype(np.int16) + added, 0, 255).astype(np.uint8)

    def score(self, pixels: np.ndarray) -> float:
        """uint8 [H, W, 3] -> the correlation peak over all tile offsets, in standard
        deviations (a side that is not a multiple of the tile is padded with the mean)."""
        luma = pixels.astype(np.float64).mean(-1)
        h, w = -(-luma.shape[0] // TILE) * TILE, -(-luma.shape[1] // TILE) * TILE
        padded = np.pad(luma - luma.mean(), ((0, h - luma.shape[0]), (0, w - luma.shape[1])))
        folded = padded.reshape(h // TILE, TILE, w // TILE, TILE).sum((0, 2))
        spectrum = np.fft.fft2(folded)
        whitened = spectrum / np.maximum(np.abs(spectrum), 1e-12)
        corr = np.fft.ifft2(whitened * np.conj(self._spectrum)).real
        return float((corr.max() - corr.mean()) / max(corr.std(), 1e-12))

    def detect(self, image: Image.Image) -> Detection:
        """The best score of `image` as it is and rescaled to each of `SIDES`."""
        rgb = image.convert("RGB")
        best = Detection(self.score(np.asarray(rgb)))
        for side in SIDES:
            scale = side / max(rgb.size)
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            if size != rgb.size:
                found = Detection(self.score(np.asarray(rgb.resize(size, Image.Resampling.BICUBIC))), side)
                best = max(best, found, key=lambda d: d.score)
        return best


def band_mask() -> np.ndarray:
    """bool [TILE, TILE]: the FFT bins whose frequency lies in `BAND` (cycles per tile)."""
    f = np.fft.fftfreq(TILE) * TILE
    radius = np.hypot(f[:, None], f[None, :])
    return (radius >= BAND[0]) & (radius <= BAND[1])
