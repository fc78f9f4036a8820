"""Vectorised renderer of shapes-world scenes (numpy, a whole batch at once).

Edges are anti-aliased by signed-distance coverage: a pixel's shape coverage is
clip(0.5 - d, 0, 1), d being the signed distance (in pixels, negative inside) from the
pixel centre to the shape's outline; the pixel colour is background + coverage * (shape -
background). Square and triangle distances are the max over their edges' half-plane
distances, exact along edges and slightly under-estimated just outside corners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .world import (
    CENTRE_JITTER,
    COLOUR_JITTER,
    PALETTE,
    POSITION_CENTRES,
    RADIUS_JITTER,
    SHAPE_EXTENT,
    SHAPES,
    SIZE_RADIUS,
    SQUARE_HALF_SIDE,
    TRIANGLE_HALF_SIDE,
    Scene,
)

_CHUNK = 256  # images rasterised together; bounds the float32 working set
_EDGE_MARGIN = 0.005  # jittered shapes are kept this far inside the canvas


@dataclass
class Geometry:
    """Per-scene drawing parameters, all arrays of length N (fractions of the side)."""

    kind: np.ndarray  # [N] int, index into SHAPES
    cx: np.ndarray  # [N] float32, bounding-box centre x
    cy: np.ndarray  # [N] float32, bounding-box centre y (downwards)
    radius: np.ndarray  # [N] float32, see world.py for its meaning per kind
    fg: np.ndarray  # [N, 3] float32, shape colour 0..255
    bg: np.ndarray  # [N, 3] float32, background colour 0..255


def scene_geometry(scenes: Sequence[Scene]) -> Geometry:
    """Nominal (unjittered) drawing parameters of `scenes`."""
    centres = np.array([POSITION_CENTRES[s.position] for s in scenes], np.float32).reshape(-1, 2)
    return Geometry(
        kind=np.array([SHAPES.index(s.shape) for s in scenes], dtype=np.int64),
        cx=centres[:, 0],
        cy=centres[:, 1],
        radius=np.array([SIZE_RADIUS[s.size] for s in scenes], dtype=np.float32),
        fg=np.array([PALETTE[s.colour] for s in scenes], np.float32).reshape(-1, 3),
        bg=np.array([PALETTE[s.background] for s in scenes], np.float32).reshape(-1, 3),
    )


def half_extents(kind: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Half width and half height of each shape's bounding box, [N, 2] (x, y) in canvas
    units, for kind [N] (index into SHAPES) and radius [N]."""
    return np.array([SHAPE_EXTENT[k] for k in SHAPES], np.float32)[kind] * radius[:, None]


def jitter_geometry(geo: Geometry, rng: np.random.Generator) -> Geometry:
    """Jittered copy: centre +-0.03, radius x0.85-1.15, colours +-4% per channel.

    The centre is then moved inwards where needed so that the whole shape stays on the
    canvas (at most ~0.04 for a large triangle in a corner, far below the 0.15 that would
    change its grid cell).
    """
    n = len(geo.kind)
    cx = geo.cx + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, n).astype(np.float32)
    cy = geo.cy + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, n).astype(np.float32)
    radius = geo.radius * rng.uniform(*RADIUS_JITTER, n).astype(np.float32)
    fg = geo.fg + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 3)).astype(np.float32) * 255
    bg = geo.bg + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 3)).astype(np.float32) * 255
    extent = half_extents(geo.kind, radius)
    lo, hi = extent + _EDGE_MARGIN, 1.0 - extent - _EDGE_MARGIN
    return Geometry(
        kind=geo.kind,
        cx=np.clip(cx, lo[:, 0], hi[:, 0]),
        cy=np.clip(cy, lo[:, 1], hi[:, 1]),
        radius=radius,
        fg=np.clip(fg, 0, 255),
        bg=np.clip(bg, 0, 255),
    )


def signed_distance(kind: np.ndarray, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Signed distance to each shape's outline (negative inside), in canvas units.

    kind, radius: [N, 1, 1]; dx: [N, 1, W] and dy: [N, H, 1] offsets of pixel centres from
    the bounding-box centre. Returns [N, H, W] float32.
    """
    ax, ay = np.abs(dx), np.abs(dy)
    circle = np.sqrt(dx**2 + dy**2) - radius
    square = np.maximum(ax, ay) - SQUARE_HALF_SIDE * radius
    half = TRIANGLE_HALF_SIDE * radius
    height = np.sqrt(np.float32(3.0)) * half
    base = dy - height / 2  # below the base is outside
    slant = ax * np.float32(np.sqrt(3.0) / 2) - (dy + height / 2) / 2  # the two sloping edges
    triangle = np.maximum(base, slant)
    return np.where(kind == 0, circle, np.where(kind == 1, square, triangle))


@dataclass
class Window:
    """A square of `side` pixels per scene, its top-left pixel at (top[i], left[i]) of the
    size x size canvas; it may reach past the canvas, where the background goes on."""

    top: np.ndarray  # [N] int
    left: np.ndarray  # [N] int
    side: int

    def take(self, sl: slice) -> "Window":
        return Window(self.top[sl], self.left[sl], self.side)


def rasterise(geo: Geometry, size: int, window: Optional[Window] = None) -> np.ndarray:
    """Draw `geo` (N scenes) on a size-px canvas as uint8 images [N, size, size, 3], or
    only each scene's `window` of it: [N, side, side, 3]."""
    n = len(geo.kind)
    if window is None:
        window = Window(np.zeros(n, np.int64), np.zeros(n, np.int64), size)
    pixels = np.arange(window.side, dtype=np.float32)
    xs = (window.left[:, None].astype(np.float32) + pixels + 0.5) / size  # [N, side]
    ys = (window.top[:, None].astype(np.float32) + pixels + 0.5) / size
    dx = xs[:, None, :] - geo.cx[:, None, None]
    dy = ys[:, :, None] - geo.cy[:, None, None]
    dist = signed_distance(geo.kind[:, None, None], dx, dy, geo.radius[:, None, None])
    coverage = np.clip(0.5 - dist * size, 0.0, 1.0)[..., None]
    bg, fg = geo.bg[:, None, None, :], geo.fg[:, None, None, :]
    return np.rint(bg + coverage * (fg - bg)).astype(np.uint8)


def _take(geo: Geometry, sl: slice) -> Geometry:
    """The scenes `sl` of `geo`."""
    return Geometry(geo.kind[sl], geo.cx[sl], geo.cy[sl], geo.radius[sl], geo.fg[sl], geo.bg[sl])


def geometry(scenes: Sequence[Scene], rng: Optional[np.random.Generator] = None, jitter: bool = False) -> Geometry:
    """The drawing parameters `render` uses: nominal, or jittered with draws from `rng`
    (a fresh unseeded generator if None)."""
    geo = scene_geometry(scenes)
    return jitter_geometry(geo, rng if rng is not None else np.random.default_rng()) if jitter else geo


def render(
    scenes: Sequence[Scene],
    size: int,
    rng: Optional[np.random.Generator] = None,
    jitter: bool = False,
    window: Optional[Window] = None,
) -> np.ndarray:
    """Render `scenes` as uint8 RGB images [N, size, size, 3], or only each one's `window`
    of its size-px canvas, [N, side, side, 3] (what a crop of the whole render holds, at a
    fraction of the cost at large sizes).

    Without jitter the output depends only on the scenes; with jitter, draws come from `rng`
    (a fresh unseeded generator if None), in one batch, so a seeded rng gives the same images
    whatever the chunking.
    """
    geo = geometry(scenes, rng, jitter)
    side = size if window is None else window.side
    out = np.empty((len(scenes), side, side, 3), dtype=np.uint8)
    for start in range(0, len(scenes), _CHUNK):
        sl = slice(start, start + _CHUNK)
        out[sl] = rasterise(_take(geo, sl), size, None if window is None else window.take(sl))
    return out
