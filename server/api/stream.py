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
import json
import time
from typing import AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..delivery.progress import Delivery, image_fields, partial_files
from ..engine.core import Job, JobCancelled, Progress
from ..errors import APIError, error_body
from ..requests.images import encode
from .running import cancel_on_disconnect, job_error, went_away

_DONE = object()


# OpenAPI: with `stream=true` the 200 answer is an event stream instead of JSON.
SSE_RESPONSE = {200: {"description": "JSON images, or with `stream=true` Server-Sent Events "
                                     "(`<prefix>.progress`, `<prefix>.partial_image`, `<prefix>.completed`, `error`)",
                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def sse(event: str, data: dict, event_id: Optional[int] = None) -> str:
    """One Server-Sent Event (with an `id:` line when `event_id` is given)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def progress_event(prefix: str, p: Progress) -> str:
    return sse(f"{prefix}.progress", {"type": f"{prefix}.progress", "stage": p.stage, "step": p.step,
                                      "total": p.total, "created_at": int(time.time())})


def image_event(kind: str, d: Delivery, index: int, data: bytes, **extra) -> str:
    """A partial_image or completed event with OpenAI's fields."""
    return sse(kind, image_fields(kind, d, index, data, **extra))


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
