"""`stream=true`: Server-Sent Events in the shape of OpenAI's image streaming.

Events, each `event: <type>` plus `data: <json>` with the same `type`:
- `{prefix}.progress` (extension): `{"stage", "step", "total", "created_at"}` per step of a
  stage (`prior`, `decoder`, `upsampler.0`, ...);
- `{prefix}.partial_image` (with `partial_images` > 0): OpenAI's fields (`b64_json`,
  `partial_image_index`, `size`, `quality`, `background`, `output_format`, `created_at`)
  plus `index` (the image); real intermediate results resized to the asked size (see
  `Partials`);
- `{prefix}.completed`: one per image, OpenAI's fields (`b64_json`, `size`,
  `output_format`, `quality`, `background`, `created_at`, `usage`) plus `index`;
- `error`: `{"error": {message, type, param, code}}` if the job fails after the stream began.
`prefix` is `image_generation` (generations) or `image_edit` (edits). Streams always
carry base64 images, as OpenAI's do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Optional

import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse
from PIL import Image

from pipelines.imageio import to_uint8
from pipelines.sampling import preview
from pipelines.stage_keys import DECODER, upsampler_key

from ..api.running import cancel_on_disconnect, job_error, went_away
from ..engine.core import Job, JobCancelled, Progress
from ..errors import APIError, error_body
from ..requests.images import FileFormat, ImageMeta, encode, encode_pixels
from ..requests.schemas import Usage

_DONE = object()
# OpenAPI: with `stream=true` the 200 answer is an event stream instead of JSON.
SSE_RESPONSE = {200: {"description": "JSON images, or with `stream=true` Server-Sent Events "
                                     "(`<prefix>.progress`, `<prefix>.partial_image`, `<prefix>.completed`, `error`)",
                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


@dataclass
class Delivery:
    """How a stream's images go out: their metadata, target (size, format, quality), the
    request's usage, and the event prefix."""

    meta: ImageMeta
    size: int
    fmt: FileFormat
    quality: str
    usage: Usage
    prefix: str


class Partials:
    """Which progress events carry partial images: `count` of the points where an image
    exists before the final one, spread evenly over them, latest last. The points are the
    decoder's prediction of the clean image at 1/4, 1/2 and 3/4 of its steps, the decoder's
    output, and each upsampler's output but the last (the last is the final image)."""

    def __init__(self, count: int, upsamplers: int):
        self.count, self.upsamplers = count, upsamplers
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


def progress_queue(partials: Optional[Partials] = None) -> tuple[asyncio.Queue, Callable[[Progress], None]]:
    """A queue of (progress, partial pixels or None) and the engine-thread callback that
    fills it (it takes the previews there, where the tracks may be read)."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()

    def hook(progress: Progress) -> None:
        pixels = to_uint8(preview(progress.tracks)) if partials and partials.wants(progress) else None
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (progress, pixels))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    return queue, hook


def sse(event: str, data: dict, event_id: Optional[int] = None) -> str:
    """One Server-Sent Event (with an `id:` line when `event_id` is given)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def progress_event(prefix: str, p: Progress) -> str:
    return sse(f"{prefix}.progress", {"type": f"{prefix}.progress", "stage": p.stage, "step": p.step,
                                      "total": p.total, "created_at": int(time.time())})


def image_fields(kind: str, d: Delivery, index: int, data: bytes, **extra) -> dict:
    """The data of a partial_image or completed event: OpenAI's fields."""
    return {"type": kind, "index": index, "b64_json": base64.b64encode(data).decode("ascii"),
            "size": f"{d.size}x{d.size}", "output_format": d.fmt.format, "quality": d.quality,
            "background": "opaque", "created_at": int(time.time()), **extra}


def image_event(kind: str, d: Delivery, index: int, data: bytes, **extra) -> str:
    """A partial_image or completed event with OpenAI's fields."""
    return sse(kind, image_fields(kind, d, index, data, **extra))


def partial_files(pixels: np.ndarray, d: Delivery) -> list[bytes]:
    """Preview pixels uint8 [n, s, s, 3] -> files at the asked size and format (PIL and
    numpy only: no torch off the engine thread)."""
    frames = [np.asarray(Image.fromarray(p).resize((d.size, d.size), Image.Resampling.BICUBIC)) for p in pixels]
    return encode_pixels(np.stack(frames), d.meta, [None] * len(frames), {"partial": True}, d.fmt)


def error_event(err: APIError) -> str:
    return sse("error", {"type": "error", **error_body(err)})


async def events(request: Request, job: Job, queue: asyncio.Queue, d: Delivery) -> AsyncIterator[str]:
    """Progress (and partial image) events until the job ends, then its images (or an error event)."""
    done = asyncio.wrap_future(job.future)
    done.add_done_callback(lambda f: (f.cancelled() or f.exception(), queue.put_nowait(_DONE)))  # retrieved
    watcher = asyncio.create_task(cancel_on_disconnect(request, job))
    sent = 0
    try:
        while (item := await queue.get()) is not _DONE:
            progress, pixels = item
            yield progress_event(d.prefix, progress)
            if pixels is not None:
                for i, data in enumerate(await asyncio.to_thread(partial_files, pixels, d)):
                    yield image_event(f"{d.prefix}.partial_image", d, i, data, partial_image_index=sent)
                sent += 1
        if job.future.cancelled() or job.future.exception() is not None:
            if went_away(watcher):  # no one to send the error event to
                return
            exc = job.future.exception() if not job.future.cancelled() else None
            yield error_event(job_error(request, job, exc or JobCancelled()))
            return
        files = await asyncio.to_thread(encode, job.future.result(), d.meta, d.fmt)
        for i, data in enumerate(files):
            yield image_event(f"{d.prefix}.completed", d, i, data, usage=d.usage.model_dump())
    finally:
        watcher.cancel()
        if not job.future.done():
            job.cancel()


def stream_response(request: Request, job: Job, queue: asyncio.Queue, d: Delivery,
                    headers: dict[str, str]) -> StreamingResponse:
    """The SSE response of a submitted job."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers}
    return StreamingResponse(events(request, job, queue, d), media_type="text/event-stream", headers=headers)
