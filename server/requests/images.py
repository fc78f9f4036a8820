"""From an operation's result to the response's image files: PNG, JPEG, WEBP or one
animated GIF of all the frames, each carrying its generation parameters, then either a
URL into the store or base64.

Where the parameters go, so that common readers find them:
- PNG: one tEXt chunk per parameter, all of them as JSON in `unclip`, and AUTOMATIC1111's
  `parameters` text (`<prompt>\\nSteps: 4, Sampler: ddim, CFG scale: 1.25, Seed: 7, ...`);
- JPEG, WEBP: the A1111 text as EXIF UserComment (as A1111 writes it), the JSON as XMP;
- GIF: the A1111 text of the first frame as the file's comment.

Every file also carries XMP (PNG: an iTXt `XML:com.adobe.xmp` chunk; GIF: an XMP
application extension) with the IPTC digital source type `Iptc4xmpExt:DigitalSourceType`:
trainedAlgorithmicMedia, or compositeWithTrainedAlgorithmicMedia for images made from
uploads; and, with credentials configured (server/trust/credentials.py), a signed C2PA manifest.
Unless turned off, the pixels carry an invisible watermark (server/trust/watermark.py).
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any, Optional
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, PngImagePlugin

from pipelines.imageio import to_uint8
from pipelines.operations import OpResult

from ..state.url_store import ImageStore
from ..trust.credentials import TRAINED, Credentials, Provenance
from ..trust.watermark import Watermark
from .schemas import ImageData, OutputFormat

SOFTWARE = "unclip-server"
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
DEFAULT_FRAME_MS = 200
EXIF_IFD, USER_COMMENT, EXIF_SOFTWARE = 0x8769, 0x9286, 0x0131
XMP_KEY = "XML:com.adobe.xmp"  # PNG's iTXt keyword for XMP
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
# GIF: an application extension "XMP DataXMP", the packet, then XMP's 258-byte magic trailer.
GIF_XMP_HEADER = b"\x21\xff\x0bXMP DataXMP"
GIF_XMP_TRAILER = b"\x01" + bytes(range(255, -1, -1)) + b"\x00"
# A1111's own names for the parameters it shows first; the rest follow as "name: value".
A1111_NAMES = {"decoder_steps": "Steps", "decoder_sampler": "Sampler", "decoder_guidance": "CFG scale",
               "seed": "Seed", "size": "Size", "model": "Model"}


@dataclass(frozen=True)
class FileFormat:
    """How the images are written: format, JPEG/WEBP quality (None: 100), GIF frame delay."""

    format: OutputFormat = "png"
    compression: Optional[int] = None
    frame_ms: int = DEFAULT_FRAME_MS


@dataclass
class ImageMeta:
    """What produced a result: written into every file. params holds the request's fields
    and the sampling settings in effect (None values are left out); image i used seed + i."""

    model: str
    operation: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    source_type: str = TRAINED  # IPTC digital source type (server/trust/credentials.py)
    ingredients: tuple[bytes, ...] = ()  # the uploads it was made from, as C2PA ingredient archives
    credentials: Optional[Credentials] = None  # signs a C2PA manifest into every file
    watermark: Optional[Watermark] = None  # marks every image's pixels
    painted: Optional[np.ndarray] = None  # bool [h, w], any size: the only pixels marked (edits; None: all)

    def provenance(self) -> Provenance:
        """What the files' C2PA manifests say: model, operation, source type, the uploads,
        whether the pixels are watermarked."""
        return Provenance(self.model, self.operation, self.source_type, self.ingredients, self.watermark is not None)

    def values(self, index: int, theta: Optional[float] = None,
               settings: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The parameters of image `index` (the operation's `settings` as used win over the request's)."""
        values = {k: v for k, v in {**self.params, **(settings or {})}.items() if v is not None}
        values.update(model=self.model, operation=self.operation, seed=self.seed + index)
        if theta is not None:
            values["theta"] = theta
        return values

    def chunks(self, index: int, theta: Optional[float] = None,
               settings: Optional[dict[str, Any]] = None) -> dict[str, str]:
        """PNG tEXt chunks of image `index`: one per parameter, the JSON, the A1111 text."""
        values = self.values(index, theta, settings)
        text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
        text.update(unclip=json.dumps(values, sort_keys=True), parameters=a1111_text(values), Software=SOFTWARE)
        return text


def a1111_text(values: dict[str, Any]) -> str:
    """AUTOMATIC1111's `parameters` text: the prompt, then `Name: value, ...`."""
    shown = {name: values[key] for key, name in A1111_NAMES.items() if key in values}
    shown |= {k: v for k, v in values.items() if k not in A1111_NAMES and k != "prompt"}
    line = ", ".join(f"{k}: {v if isinstance(v, (str, int, float)) else json.dumps(v)}" for k, v in shown.items())
    return f"{values.get('prompt', '')}\n{line}"


def thetas_of(result: OpResult) -> list[Optional[float]]:
    """The theta of every image (interpolations, text diffs) or None for each."""
    thetas, n = result.thetas, result.images.shape[0]
    return [float(t) for t in thetas] if thetas is not None and len(thetas) == n else [None] * n


def encode(result: OpResult, meta: ImageMeta, fmt: FileFormat = FileFormat()) -> list[bytes]:
    """result.images [n, 3, S, S] in [-1, 1] -> n files (one GIF of the n frames for gif)."""
    return encode_pixels(to_uint8(result.images), meta, thetas_of(result), result.settings, fmt)


def encode_pixels(pixels: np.ndarray, meta: ImageMeta, thetas: list[Optional[float]], settings: dict[str, Any],
                  fmt: FileFormat) -> list[bytes]:
    """uint8 [n, H, W, 3] -> n files (one GIF of the n frames for gif) with their parameters,
    watermarked and signed where `meta` says so."""
    if meta.watermark is not None:
        pixels = meta.watermark.mark(pixels, meta.painted)
    values = [meta.values(i, thetas[i], settings) for i in range(len(pixels))]
    xmp = [xmp_packet(v, meta.source_type) for v in values]
    if fmt.format == "gif":
        files = [gif_bytes(pixels, fmt.frame_ms, a1111_text(values[0]), xmp[0])]
    elif fmt.format == "png":
        files = [png_file(pixels[i], meta.chunks(i, thetas[i], settings), xmp[i]) for i in range(len(pixels))]
    else:
        files = [exif_file(pixels[i], values[i], fmt, xmp[i]) for i in range(len(pixels))]
    if meta.credentials is None:
        return files
    provenance = meta.provenance()
    return [meta.credentials.sign(data, fmt.format, provenance) for data in files]


def png_file(pixels: np.ndarray, text: dict[str, str], xmp: Optional[bytes] = None) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes with `text` as tEXt chunks and `xmp` as its XMP."""
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, str(v))
    if xmp is not None:
        info.add_itxt(XMP_KEY, xmp.decode())
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def exif_file(pixels: np.ndarray, values: dict[str, Any], fmt: FileFormat, xmp: bytes) -> bytes:
    """uint8 [H, W, 3] -> JPEG or WEBP bytes at the asked quality, parameters in EXIF, `xmp` as XMP."""
    exif = Image.Exif()
    exif[EXIF_SOFTWARE] = SOFTWARE
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + a1111_text(values).encode("utf-16-be")
    quality = 100 if fmt.compression is None else fmt.compression
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt.format.upper(), quality=quality, exif=exif.tobytes(), xmp=xmp)
    return buf.getvalue()


def xmp_packet(values: dict[str, Any], source_type: str = TRAINED) -> bytes:
    """An XMP packet holding the parameters as JSON (unclip:parameters) and the IPTC digital
    source type (Iptc4xmpExt:DigitalSourceType)."""
    body = escape(json.dumps(values, sort_keys=True))
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:unclip="urn:unclip-server:1" xmlns:Iptc4xmpExt="{IPTC_EXT}">'
            f'<Iptc4xmpExt:DigitalSourceType>{escape(source_type)}</Iptc4xmpExt:DigitalSourceType>'
            f'<unclip:parameters>{body}</unclip:parameters></rdf:Description></rdf:RDF></x:xmpmeta>').encode()


def gif_bytes(frames: np.ndarray, frame_ms: int, comment: str, xmp: Optional[bytes] = None) -> bytes:
    """uint8 [F, H, W, 3] -> one looping animated GIF, `frame_ms` per frame, with `xmp` as
    an XMP application extension before the file's trailer."""
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   comment=comment.encode()[:65_000], optimize=False)
    data = buf.getvalue()
    if xmp is None:
        return data
    return data[:-1] + GIF_XMP_HEADER + xmp + GIF_XMP_TRAILER + data[-1:]  # data ends with the trailer ';'


async def image_items(files: list[bytes], thetas: list[Optional[float]], response_format: str, store: ImageStore,
                      base_url: str, fmt: FileFormat = FileFormat()) -> list[ImageData]:
    """The response's `data`: URLs (`{base_url}/v1/files/images/{id}.{format}`, the files
    put in `store`) or base64."""
    if fmt.format == "gif":
        thetas = [None]
    items = []
    for data, theta in zip(files, thetas):
        if response_format == "b64_json":
            items.append(ImageData(b64_json=base64.b64encode(data).decode("ascii"), theta=theta))
        else:
            url = f"{base_url.rstrip('/')}/v1/files/images/{await store.put(data)}.{fmt.format}"
            items.append(ImageData(url=url, theta=theta))
    return items
