"""GET /v1/files/images/{id}.png: the images of `response_format=url` responses.

Open without an API key: the unguessable id is the capability. Gone after the URL TTL
(or earlier, when the bounded store evicts the oldest images): 404.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Response

from ..errors import APIError
from ..runtime import AppRuntime

router = APIRouter()


@router.get(
    "/files/images/{image_id}.png", response_class=Response, summary="Fetch an image by URL",
    responses={200: {"content": {"image/png": {}}}},
)
async def get_image(image_id: str, rt: AppRuntime) -> Response:
    store = rt.store
    data = store.get(image_id)
    if data is None:
        raise APIError(404, "This image does not exist or has expired.", param="image_id", code="not_found")
    max_age = math.floor(store.expires_in(image_id))
    return Response(data, media_type="image/png", headers={"Cache-Control": f"private, max-age={max_age}"})
