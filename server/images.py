"""From an operation's result to the response's images: PNG bytes carrying the generation
parameters as tEXt chunks, then either a URL into the store or base64."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from pipelines.imageio import png_bytes, to_uint8
from pipelines.operations import OpResult

from .schemas import ImageData
from .url_store import UrlStore

SOFTWARE = "unclip-server"


@dataclass
class ImageMeta:
    """What produced a result: written into every PNG. params holds the request's fields
    (None values are left out); image i of the result used seed + i."""

    model: str
    operation: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def chunks(self, index: int, theta: Optional[float] = None, settings: Optional[dict[str, Any]] = None
               ) -> dict[str, str]:
        """tEXt chunks of image `index`: one per parameter (the operation's `settings` as
        used win over the request's) plus all of them as JSON."""
        values = {k: v for k, v in {**self.params, **(settings or {})}.items() if v is not None}
        values.update(model=self.model, operation=self.operation, seed=self.seed + index)
        if theta is not None:
            values["theta"] = theta
        text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
        text["parameters"] = json.dumps(values, sort_keys=True)
        text["Software"] = SOFTWARE
        return text


def thetas_of(result: OpResult) -> list[Optional[float]]:
    """The theta of every image (interpolations, text diffs) or None for each."""
    thetas, n = result.thetas, result.images.shape[0]
    return [float(t) for t in thetas] if thetas is not None and len(thetas) == n else [None] * n


def encode_pngs(result: OpResult, meta: ImageMeta) -> list[bytes]:
    """result.images [n, 3, S, S] in [-1, 1] -> n PNG files with their parameters."""
    pixels = to_uint8(result.images)
    thetas = thetas_of(result)
    return [png_bytes(pixels[i], meta.chunks(i, thetas[i], result.settings)) for i in range(len(pixels))]


def image_items(
    pngs: list[bytes], thetas: list[Optional[float]], response_format: str, store: UrlStore, base_url: str,
) -> list[ImageData]:
    """The response's `data`: URLs (`{base_url}/v1/files/images/{id}.png`) or base64 PNGs."""
    items = []
    for png, theta in zip(pngs, thetas):
        if response_format == "b64_json":
            items.append(ImageData(b64_json=base64.b64encode(png).decode("ascii"), theta=theta))
        else:
            items.append(ImageData(url=f"{base_url.rstrip('/')}/v1/files/images/{store.put(png)}.png", theta=theta))
    return items
