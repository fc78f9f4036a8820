"""The shapes world of docs/shapes-world.md: vocabularies, palette, geometry, scenes.

A scene is one flat-coloured shape on a flat-coloured background. Coordinates are fractions
of the canvas side, x to the right and y downwards (image convention), so `top` is y = 0.2.

What "radius" means for each kind (the page fixes it only for the circle):

* circle: the radius r.
* square: half-side 0.9 r (area 3.24 r^2).
* triangle (equilateral, apex up): half-side 1.1 r (area sqrt(3) * 1.21 r^2 = 2.10 r^2); its
  bounding box, not its centroid, is centred on the position, so it reaches no further from
  the centre than a circle (half-height 0.953 r, half-width 1.1 r).

With these choices the three kinds' areas stay within a factor 1.55 of each other (circle
pi r^2 = 3.14 r^2), so one area threshold separates small from large for all kinds even under
the x0.85-1.15 radius jitter: the largest small shape covers 0.0310 of the canvas (square,
r = 0.085 * 1.15), the smallest large one 0.0388 (triangle, r = 0.16 * 0.85). With the square
as a full 2r side and the triangle inscribed in the circle, those ranges would overlap.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "background", "size", "position")

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
# [8, 3] float32, rows in COLOURS order.
PALETTE_ARRAY: np.ndarray = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)

SIZE_RADIUS: dict[str, float] = {"small": 0.085, "large": 0.16}
GRID: tuple[float, float, float] = (0.2, 0.5, 0.8)
# (x, y) centre of each position, fractions of the side, y downwards.
POSITION_CENTRES: dict[str, tuple[float, float]] = {
    name: (GRID[i % 3], GRID[i // 3]) for i, name in enumerate(POSITIONS)
}
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}

# Half-side of the square and of the triangle's base, in units of the radius.
SQUARE_HALF_SIDE: float = 0.9
TRIANGLE_HALF_SIDE: float = 1.1
# Area of each kind in units of radius^2 (see the module docstring).
SHAPE_AREA_FACTOR: dict[str, float] = {
    "circle": math.pi,
    "square": 4.0 * SQUARE_HALF_SIDE**2,
    "triangle": math.sqrt(3.0) * TRIANGLE_HALF_SIDE**2,
}
# Half-width and half-height of each kind's bounding box, in units of the radius.
SHAPE_EXTENT: dict[str, tuple[float, float]] = {
    "circle": (1.0, 1.0),
    "square": (SQUARE_HALF_SIDE, SQUARE_HALF_SIDE),
    "triangle": (TRIANGLE_HALF_SIDE, TRIANGLE_HALF_SIDE * math.sqrt(3.0) / 2.0),
}

# Jitter ranges of the page (used by the renderer when jitter=True).
CENTRE_JITTER: float = 0.03
RADIUS_JITTER: tuple[float, float] = (0.85, 1.15)
COLOUR_JITTER: float = 0.04  # per channel, fraction of 255, for shape and background alike


@dataclass(frozen=True)
class Scene:
    """One scene: attribute values drawn from the vocabularies above."""

    shape: str
    colour: str
    background: str
    size: str
    position: str

    def __post_init__(self) -> None:
        """Reject unknown values and a background equal to the shape's colour."""
        for name, vocab in zip(ATTRIBUTES, (SHAPES, COLOURS, COLOURS, SIZES, POSITIONS)):
            if getattr(self, name) not in vocab:
                raise ValueError(f"unknown {name}: {getattr(self, name)!r}")
        if self.colour == self.background:
            raise ValueError(f"background equals the shape's colour: {self.colour!r}")

    def attributes(self) -> dict[str, str]:
        """The five attributes as a dict keyed by ATTRIBUTES."""
        return asdict(self)


def all_scenes() -> list[Scene]:
    """All 3,024 valid scenes (3 shapes x 8 colours x 7 backgrounds x 2 sizes x 9 positions)."""
    return list(_ALL_SCENES)


def _enumerate_scenes() -> tuple[Scene, ...]:
    """Enumerate valid scenes in a fixed order."""
    product = itertools.product(SHAPES, COLOURS, COLOURS, SIZES, POSITIONS)
    return tuple(Scene(*values) for values in product if values[1] != values[2])


_ALL_SCENES: tuple[Scene, ...] = _enumerate_scenes()


def random_scenes(n: int, rng: np.random.Generator) -> list[Scene]:
    """`n` scenes drawn independently and uniformly over the 3,024 valid scenes."""
    indices = rng.integers(0, len(_ALL_SCENES), size=n)
    return [_ALL_SCENES[i] for i in indices]


def random_scene(rng: np.random.Generator) -> Scene:
    """One scene drawn uniformly over the 3,024 valid scenes."""
    return random_scenes(1, rng)[0]


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the palette colour nearest each RGB: [..., 3] -> [...] int."""
    diff = np.asarray(rgb, dtype=np.float32)[..., None, :] - PALETTE_ARRAY
    return np.argmin((diff**2).sum(-1), axis=-1)
