"""GET /v1/files/images/{id}.{format}: the images of `response_format=url` responses.

Open without an API key unless `files_require_key` is set: the unguessable id is the
capability. Gone after the URL TTL (or earlier, when the bounded store evicts the oldest
images): 404. The content type follows the file's own bytes; a URL whose extension is not
the file's format is a 404 too. With UNCLIP_REDIS_URL any replica serves any replica's
images (503 `store_unavailable` while Redis is unreachable).
"""

from __future__ import annotations

import math
from typing import Optional

from fastapi import APIRouter, Response

from ..errors import APIError
from ..requests.images import CONTENT_TYPES
from ..runtime import AppRuntime

router = APIRouter()

MAGIC = {"png": (b"\x89PNG",), "jpeg": (b"\xff\xd8\xff",), "gif": (b"GIF87a", b"GIF89a")}


def format_of(data: bytes) -> Optional[str]:
    """The format of an image file from its first bytes (png, jpeg, webp, gif) or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((fmt for fmt, heads in MAGIC.items() if data.startswith(heads)), None)


@router.get(
    "/files/images/{image_id}.{ext}", response_class=Response, summary="Fetch an image by URL",
    responses={200: {"content": {ctype: {} for ctype in CONTENT_TYPES.values()}}},
)
async def get_image(image_id: str, ext: str, rt: AppRuntime) -> Response:
    data = await rt.store.get(image_id)
    if data is None or format_of(data) != ext:
        raise APIError(404, "This image does not exist or has expired.", param="image_id", code="not_found")
    max_age = math.floor(await rt.store.expires_in(image_id))
    return Response(data, media_type=CONTENT_TYPES[ext], headers={"Cache-Control": f"private, max-age={max_age}"})
