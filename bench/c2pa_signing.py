"""What a C2PA manifest adds to each image file: the milliseconds of encoding one image
with its parameters and XMP, unsigned and signed (a fresh development certificate chain,
tools/c2pa_cert.py), and the bytes it adds, per format and size; and what an upload costs
once the server signs: its decode alone against its decode plus its ingredient archive
(`Credentials.ingredient`), for an unsigned PNG and for a signed JPEG (a manifest to carry).

    .venv/bin/python -m bench.c2pa_signing [--sizes 256 1024] [--repeats 10]

The image is a render of the shapes world (what the shipped model draws); unsigned and
signed encodings alternate, so that a busy host slows both alike. Signing costs hashing
the file and one ES256 signature.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from bench import write_result
from pipelines.imageio import open_image, to_uint8
from server.requests.images import FileFormat, ImageMeta, encode_pixels
from server.trust.credentials import Credentials, load_credentials
from tools.c2pa_cert import make_chain, write_chain
from tools.evaluation import scene_images
from tools.shapes import Scene

FORMATS = ("png", "jpeg", "webp", "gif")


def paired_ms(runs: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Median milliseconds of each run, called in turn `repeats` times (after one warm-up)."""
    times: list[list[float]] = [[] for _ in runs]
    for i in range(repeats + 1):
        for run, spent in zip(runs, times):
            started = time.perf_counter()
            run()
            if i:
                spent.append((time.perf_counter() - started) * 1000)
    return [statistics.median(t) for t in times]


def measure(credentials: Credentials, size: int, fmt: str, repeats: int) -> dict[str, float]:
    """Unsigned and signed encoding of one size x size image: ms, bytes, the ratio."""
    pixels = to_uint8(scene_images([Scene("circle", "blue", "white", "large", "center")], size))
    metas = {signed: ImageMeta("shapes-default", "generation", 1, {"prompt": "a blue circle"},
                               credentials=credentials if signed else None) for signed in (False, True)}

    def encode(signed: bool) -> list[bytes]:
        return encode_pixels(pixels, metas[signed], [None], {}, FileFormat(fmt))

    plain, signed = paired_ms([lambda: encode(False), lambda: encode(True)], repeats)
    return {"size": size, "format": fmt, "unsigned_ms": round(plain, 2), "signed_ms": round(signed, 2),
            "signing_ms": round(signed - plain, 2), "ratio": round(signed / plain, 2),
            "added_bytes": len(encode(True)[0]) - len(encode(False)[0])}


def measure_upload(credentials: Credentials, size: int, repeats: int) -> list[dict[str, float]]:
    """Decode of one size x size upload, alone and with its ingredient archive: ms and bytes,
    for a PNG without a manifest and a JPEG with one."""
    pixels = to_uint8(scene_images([Scene("circle", "blue", "white", "large", "center")], size))
    meta = ImageMeta("shapes-default", "generation", 1, {"prompt": "a blue circle"}, credentials=credentials)
    uploads = {"png": encode_pixels(pixels, ImageMeta("m", "generation", 1), [None], {}, FileFormat("png"))[0],
               "signed jpeg": encode_pixels(pixels, meta, [None], {}, FileFormat("jpeg"))[0]}
    return [upload_row(credentials, size, name, data, repeats) for name, data in uploads.items()]


def upload_row(credentials: Credentials, size: int, name: str, data: bytes, repeats: int) -> dict[str, Any]:
    """One upload's decode alone and with its ingredient archive."""
    fmt = name.split()[-1]
    plain, kept = paired_ms([lambda: open_image(data),
                             lambda: credentials.ingredient(data, fmt, 0, open_image(data))], repeats)
    return {"size": size, "upload": name, "upload_bytes": len(data), "decode_ms": round(plain, 2),
            "with_ingredient_ms": round(kept, 2), "ingredient_ms": round(kept - plain, 2),
            "archive_bytes": len(credentials.ingredient(data, fmt, 0, open_image(data)))}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.c2pa_signing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_chain(Path(tmp), make_chain())
        credentials = load_credentials(paths["chain"], paths["key"])
    rows = [measure(credentials, size, fmt, args.repeats) for size in args.sizes for fmt in FORMATS]
    for r in rows:
        print(f"{r['size']:5d} px {r['format']:5s} unsigned {r['unsigned_ms']:8.2f} ms  signed {r['signed_ms']:8.2f} ms"
              f"  (+{r['signing_ms']:.2f} ms, x{r['ratio']:.2f}, +{r['added_bytes']} bytes)")
    uploads = [row for size in args.sizes for row in measure_upload(credentials, size, args.repeats)]
    for r in uploads:
        print(f"{r['size']:5d} px upload {r['upload']:11s} ({r['upload_bytes']} bytes): decode {r['decode_ms']:.2f} ms,"
              f" with its ingredient {r['with_ingredient_ms']:.2f} ms (+{r['ingredient_ms']:.2f} ms,"
              f" archive {r['archive_bytes']} bytes)")
    print(f"wrote {write_result('c2pa_signing', {'files': rows, 'uploads': uploads})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
