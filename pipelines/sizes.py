"""Output sizes: which a model makes, and where a render of one ends.

Convention: a size is (width, height) in pixels, written "WxH" on the wire; an int side
means the square. unCLIP makes a fixed list of squares (one per upsampler it runs);
a latent model (Kandinsky 2.2) makes any width x height on its latent grid within bounds
around its native size (as diffusers rounds sizes: multiples of the MoVQ scale squared).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

from .errors import InvalidInput

Size = tuple[int, int]  # (width, height) in pixels
SizeLike = Union[int, Size, None]  # an int: the square; None: the model's default


def as_size(size: Union[int, Size]) -> Size:
    """An int side -> its square; a (width, height) pair as ints."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def size_name(size: Size) -> str:
    """(width, height) -> "WxH"."""
    return f"{size[0]}x{size[1]}"


def aspect_box(size: Size, aspect: Size) -> tuple[int, int, int, int]:
    """The largest centred box of `size` (W, H) with the aspect of `aspect` (W', H'):
    (left, top, width, height), each side at least 1 pixel."""
    w, h = size
    if w * aspect[1] > h * aspect[0]:  # wider than wanted: crop the sides
        width, height = max(1, round(h * aspect[0] / aspect[1])), h
    else:
        width, height = w, max(1, round(w * aspect[1] / aspect[0]))
    return (w - width) // 2, (h - height) // 2, width, height


@dataclass(frozen=True)
class Output:
    """Where a render ends: the image's width and height, and (unCLIP) how many upsamplers
    run to get there (Kandinsky: 0, its latent decoder and MoVQ make every size)."""

    width: int
    height: int
    upsamplers: int = 0

    @property
    def size(self) -> Size:
        return self.width, self.height


@dataclass(frozen=True)
class SizeRule:
    """The sizes a model makes: the `listed` ones (what /v1/models offers, in that order),
    `default` for a request that names none, and, where `unit` > 0, any other width x height
    in multiples of `unit` with each side in [min_side, max_side] and the long side at most
    `max_aspect` times the short one."""

    listed: tuple[Size, ...]
    default: Size
    unit: int = 0
    min_side: int = 0
    max_side: int = 0
    max_aspect: float = 1.0

    @classmethod
    def squares(cls, sides: Sequence[int]) -> "SizeRule":
        """Exactly these squares (smallest first), the largest by default."""
        listed = tuple(as_size(s) for s in sorted(sides))
        return cls(listed, listed[-1])

    @classmethod
    def latent_grid(cls, native: int, unit: int, max_aspect: float = 3.0) -> "SizeRule":
        """Any size on a `unit` grid from native / 2 to 3 native per side, aspect up to
        max_aspect (Kandinsky 2.2: 512 native, 64 grid -> 256 .. 1536, 1:3 .. 3:1). Listed: the
        native size, 1.5x and 2x its square, then 3:2 and 2:3 at twice its area (OpenAI's
        1536x1024 and 1024x1536 for a 512 model), the half-size square last; each where the
        grid allows."""
        rule = cls((), (native, native), unit, native // 2, 3 * native, max_aspect)
        wanted = [(native, native), (native * 3 // 2,) * 2, (2 * native,) * 2, (3 * native, 2 * native),
                  (2 * native, 3 * native), (native // 2,) * 2]
        listed = tuple(dict.fromkeys(s for s in wanted if rule.allows(s)))
        return cls(listed, (native, native), unit, native // 2, 3 * native, max_aspect)

    def for_aspect(self, size: Size) -> Size:
        """The output size for an input of size (W, H) when a request names none: the default
        where the model makes listed sizes only; else the size on the grid whose aspect is
        nearest the input's (at most `max_aspect`) at about the default's area (an aspect
        error counts four times an area error, both as log ratios)."""
        if self.unit == 0:
            return self.default
        aspect, area = size[0] / size[1], self.default[0] * self.default[1]
        sides = range(self.min_side, self.max_side + 1, self.unit)
        allowed = [(w, h) for w in sides for h in sides if self.allows((w, h))]
        return min(allowed, key=lambda s: 4 * abs(math.log(s[0] / s[1] / aspect)) + abs(math.log(s[0] * s[1] / area)),
                   default=self.default)

    def allows(self, size: Size) -> bool:
        w, h = size
        if size in self.listed:
            return True
        return (self.unit > 0 and w % self.unit == 0 and h % self.unit == 0
                and self.min_side <= min(w, h) and max(w, h) <= self.max_side
                and max(w, h) <= self.max_aspect * min(w, h))

    def check(self, size: SizeLike, param: str = "size") -> Size:
        """The size a request asks for (None: the default), or InvalidInput on `param`
        saying what the model makes."""
        if size is None:
            return self.default
        out = as_size(size)
        if not self.allows(out):
            raise InvalidInput(param, f"'{size_name(out)}' is not a supported size. {self.describe()}")
        return out

    def describe(self) -> str:
        """What the rule allows, in words, for error messages."""
        listed = [size_name(s) for s in self.listed]
        if self.unit == 0:
            return f"Supported: {listed}."
        return (f"Supported: WxH with both sides multiples of {self.unit} from {self.min_side} to "
                f"{self.max_side} and aspect ratio at most {self.max_aspect:g}:1, e.g. {listed}.")

