"""A job's progress as it happens: the engine's progress reports (and, where asked, the
partial images taken from them on the engine thread) queued for the event loop, and the
fields and files of image events, shared by SSE streams (server/api/stream.py) and job
records (server/delivery/follow.py)."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from PIL import Image
from torch import Tensor

from pipelines.imageio import to_uint8
from pipelines.sampling import Track, preview
from pipelines.sizes import Size, size_name
from pipelines.stage_keys import DECODER, upsampler_key

from ..engine.core import Progress
from ..requests.images import FileFormat, ImageMeta, encode_pixels
from ..requests.schemas import Usage


@dataclass
class Delivery:
    """How a stream's images go out: their metadata, target (size, format, quality), the
    request's usage, and the event prefix."""

    meta: ImageMeta
    size: Size  # (width, height)
    fmt: FileFormat
    quality: str
    usage: Usage
    prefix: str


Preview = Callable[[str, list[Track]], Tensor]  # a stage's tracks -> images [n, 3, H, W] in [-1, 1]


class Partials:
    """Which progress events carry partial images: `count` of the points where an image
    exists before the final one, spread evenly over them, latest last. The points are the
    decoder's prediction of the clean image at 1/4, 1/2 and 3/4 of its steps, the decoder's
    output, and each upsampler's output but the last (the last is the final image)."""

    def __init__(self, count: int, upsamplers: int, preview: Optional[Preview] = None):
        self.count, self.upsamplers = count, upsamplers
        self.preview = preview or pixel_preview  # the model's (e.g. latents decoded)
        self.points: Optional[set[tuple[str, int]]] = None
        self.upsampler_ends = {upsampler_key(u) for u in range(upsamplers - 1)}

    def wants(self, p: Progress) -> bool:
        """Whether this progress event gets a partial image (each point once)."""
        if not self.count:
            return False
        if self.points is None and p.stage == DECODER:
            self.points = self._choose(p.total)
        if self.points is None:
            return False
        point = (p.stage, -1 if p.step == p.total and p.stage in self.upsampler_ends else p.step)
        if point in self.points:
            self.points.discard(point)
            return True
        return False

    def _choose(self, total: int) -> set[tuple[str, int]]:
        steps = sorted({math.ceil(total * f) for f in (0.25, 0.5, 0.75)} | {total})
        points = [(DECODER, s) for s in steps if s > 0]
        points += [(key, -1) for key in sorted(self.upsampler_ends)]
        if not self.upsamplers:
            points = points[:-1]  # the decoder's output is the final image
        if self.count >= len(points):
            return set(points)
        return {points[round((j + 1) * len(points) / self.count) - 1] for j in range(self.count)}


def pixel_preview(stage: str, tracks: list[Track]) -> Tensor:
    return preview(tracks)


def progress_queue(partials: Optional[Partials] = None) -> tuple[asyncio.Queue, Callable[[Progress], None]]:
    """A queue of (progress, partial pixels or None) and the engine-thread callback that
    fills it (it takes the previews there, where the tracks may be read)."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()

    def hook(progress: Progress) -> None:
        wanted = partials is not None and partials.wants(progress)
        pixels = to_uint8(partials.preview(progress.stage, progress.tracks)) if wanted else None
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (progress, pixels))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    return queue, hook


def image_fields(kind: str, d: Delivery, index: int, data: bytes, **extra) -> dict:
    """The data of a partial_image or completed event: OpenAI's fields."""
    return {"type": kind, "index": index, "b64_json": base64.b64encode(data).decode("ascii"),
            "size": size_name(d.size), "output_format": d.fmt.format, "quality": d.quality,
            "background": "opaque", "created_at": int(time.time()), **extra}


def partial_files(pixels: np.ndarray, d: Delivery) -> list[bytes]:
    """Preview pixels uint8 [n, s, s, 3] -> files at the asked size and format (PIL and
    numpy only: no torch off the engine thread)."""
    frames = [np.asarray(Image.fromarray(p).resize(d.size, Image.Resampling.BICUBIC)) for p in pixels]
    return encode_pixels(np.stack(frames), d.meta, [None] * len(frames), {"partial": True}, d.fmt)
