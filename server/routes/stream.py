"""`stream=true`: Server-Sent Events in the shape of OpenAI's image streaming.

Events, each `event: <type>` plus `data: <json>` with the same `type`:
- `{prefix}.progress` (extension): `{"stage", "step", "total", "created_at"}` per step of a
  stage (`prior`, `decoder`, `upsampler.0`, ...);
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
import time
from typing import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..engine import Job, JobCancelled, Progress
from ..errors import APIError, error_body
from ..images import ImageMeta, encode_pngs
from .running import cancel_on_disconnect, job_error

_DONE = object()
# OpenAPI: with `stream=true` the 200 answer is an event stream instead of JSON.
SSE_RESPONSE = {200: {"description": "JSON images, or with `stream=true` Server-Sent Events "
                                     "(`<prefix>.progress`, `<prefix>.completed`, `error`)",
                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
         "output_tokens": 0, "total_tokens": 0}


def progress_queue() -> tuple[asyncio.Queue, Callable[[Progress], None]]:
    """A queue of progress events and the engine-thread callback that fills it."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()

    def hook(progress: Progress) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, progress)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    return queue, hook


def sse(event: str, data: dict) -> str:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def progress_event(prefix: str, p: Progress) -> str:
    return sse(f"{prefix}.progress", {"type": f"{prefix}.progress", "stage": p.stage, "step": p.step,
                                      "total": p.total, "created_at": int(time.time())})


def completed_event(prefix: str, index: int, png: bytes, size: int) -> str:
    kind = f"{prefix}.completed"
    return sse(kind, {"type": kind, "index": index, "b64_json": base64.b64encode(png).decode("ascii"),
                      "size": f"{size}x{size}", "output_format": "png", "quality": "auto", "background": "opaque",
                      "created_at": int(time.time()), "usage": USAGE})


def error_event(err: APIError) -> str:
    return sse("error", {"type": "error", **error_body(err)})


async def events(request: Request, job: Job, queue: asyncio.Queue, meta: ImageMeta, prefix: str,
                 size: int) -> AsyncIterator[str]:
    """Progress events until the job ends, then its images (or an error event)."""
    done = asyncio.wrap_future(job.future)
    done.add_done_callback(lambda _: queue.put_nowait(_DONE))
    watcher = asyncio.create_task(cancel_on_disconnect(request, job))
    try:
        while (item := await queue.get()) is not _DONE:
            yield progress_event(prefix, item)
        if job.future.cancelled() or job.future.exception() is not None:
            exc = job.future.exception() if not job.future.cancelled() else None
            yield error_event(job_error(request, job, exc or JobCancelled()))
            return
        pngs = await asyncio.to_thread(encode_pngs, job.future.result(), meta)
        for i, png in enumerate(pngs):
            yield completed_event(prefix, i, png, size)
    finally:
        watcher.cancel()
        if not job.future.done():
            job.cancel()


def stream_response(request: Request, job: Job, queue: asyncio.Queue, meta: ImageMeta, prefix: str,
                    size: int) -> StreamingResponse:
    """The SSE response of a submitted job."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(request, job, queue, meta, prefix, size), media_type="text/event-stream",
                             headers=headers)
