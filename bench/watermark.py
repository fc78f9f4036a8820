"""The invisible watermark (server/trust/watermark.py) on a model's images (default the
shipped shapes model): what it costs the pixels (PSNR, the shapes judge's verdicts), how
often it is found after what images go through on their way (re-encoding, rescaling,
cropping), how high unmarked images score (the false alarms), and its time per image.

    .venv/bin/python -m bench.watermark [--model-dir weights/default] [--sizes 256 1024] [-n 8]

Images: n generations of random canonical captions of the shapes world at each size (the
server's default steps), and n renders of random scenes at each size as unmarked uploads
(flat colours: the hardest case for false alarms). Unmarked images are also checked after
marking with another key. The key is the server's default.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance

from bench import write_result
from pipelines.checkpoints import load_model_dir
from pipelines.imageio import to_uint8
from pipelines.operations import generate
from pipelines.unclip import UnCLIP, run_many
from server.settings import Settings
from server.trust.watermark import THRESHOLD, Watermark
from tools.evaluation import judged, scene_images
from tools.shapes import canonical_caption, random_scenes

Attack = Callable[[Image.Image], Image.Image]


def encoded(fmt: str, **options: Any) -> Attack:
    """Save as `fmt` with `options` and read back."""
    def attack(image: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        image.save(buf, fmt, **options)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return attack


def scaled(factor: float, then: Optional[Attack] = None) -> Attack:
    """Resize (bicubic) by `factor`, then `then`."""
    def attack(image: Image.Image) -> Image.Image:
        small = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC)
        return then(small) if then else small
    return attack


def cropped(then: Optional[Attack] = None) -> Attack:
    """Keep 70% of each side, off-centre (the tile's offset moves), then `then`."""
    def attack(image: Image.Image) -> Image.Image:
        w, h = image.size
        part = image.crop((w // 10, h // 5, w // 10 + int(0.7 * w), h // 5 + int(0.7 * h)))
        return then(part) if then else part
    return attack


def brighter(image: Image.Image) -> Image.Image:
    return ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(1.1)).enhance(0.9)


ATTACKS: dict[str, Attack] = {
    "png": encoded("PNG"),
    "jpeg 90": encoded("JPEG", quality=90),
    "jpeg 75": encoded("JPEG", quality=75),
    "jpeg 50": encoded("JPEG", quality=50),
    "webp 80": encoded("WEBP", quality=80),
    "webp 50": encoded("WEBP", quality=50),
    "gif": encoded("GIF"),
    "brightness +10%, contrast -10%": brighter,
    "3/4 size": scaled(0.75),
    "1/2 size": scaled(0.5),
    "1/2 size, jpeg 85": scaled(0.5, encoded("JPEG", quality=85)),
    "1/2 size, jpeg 70": scaled(0.5, encoded("JPEG", quality=70)),
    "1/2 size, webp 80": scaled(0.5, encoded("WEBP", quality=80)),
    "crop 70%": cropped(),
    "crop 70%, jpeg 75": cropped(encoded("JPEG", quality=75)),
}


def generations(pipe: UnCLIP, n: int, size: int, seed: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: n random canonical captions, one image each."""
    texts = [canonical_caption(s) for s in random_scenes(n, np.random.default_rng(seed))]
    results = run_many(pipe, [generate(pipe, t, seed=seed + i, size=size) for i, t in enumerate(texts)], max_batch=8)
    return np.concatenate([to_uint8(r.images) for r in results])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def judge_agreement(clean: np.ndarray, marked: np.ndarray) -> float:
    """Fraction of images the shapes judge sees alike (every attribute) marked and not."""
    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    pairs = zip(judged(tensor(clean)), judged(tensor(marked)))
    return float(np.mean([a.attributes() == b.attributes() for a, b in pairs]))


def found(mark: Watermark, images: Sequence[Image.Image]) -> dict[str, float]:
    scores = [mark.detect(im).score for im in images]
    return {"found": float(np.mean([s >= THRESHOLD for s in scores])), "min": min(scores),
            "median": statistics.median(scores), "max": max(scores)}


def per_size(mark: Watermark, other: Watermark, clean: np.ndarray, renders: np.ndarray) -> dict[str, Any]:
    """Every figure at one size, from its generations `clean` and unmarked `renders`."""
    started = time.perf_counter()
    marked = mark.mark(clean)
    mark_ms = (time.perf_counter() - started) * 1e3 / len(clean)
    images = [Image.fromarray(x) for x in marked]
    started = time.perf_counter()
    attacks = {name: found(mark, [attack(im) for im in images]) for name, attack in ATTACKS.items()}
    detect_ms = (time.perf_counter() - started) * 1e3 / (len(images) * len(ATTACKS))
    unmarked = [Image.fromarray(x) for x in np.concatenate([clean, renders, other.mark(clean)])]
    return {"psnr_db": min(psnr(a, b) for a, b in zip(clean, marked)),
            "judge_agreement": judge_agreement(clean, marked), "mark_ms": mark_ms, "detect_ms": detect_ms,
            "attacks": attacks, "unmarked": found(mark, unmarked)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path("weights/default"))
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("-n", type=int, default=8, help="generations (and renders) per size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    pipe = UnCLIP(load_model_dir(args.model_dir).use_channels_last())  # as the server runs it
    mark, other = Watermark(Settings.model_fields["watermark_key"].default), Watermark("another key")
    sizes = {}
    for size in args.sizes:
        renders = to_uint8(scene_images(random_scenes(args.n, np.random.default_rng(args.seed + 1)), size))
        sizes[size] = per_size(mark, other, generations(pipe, args.n, size, args.seed), renders)
        report(size, sizes[size])
    path = write_result("watermark", {"model": pipe.cfg.name, "n": args.n, "threshold": THRESHOLD, "sizes": sizes})
    print(f"wrote {path}")
    return 0


def report(size: int, r: dict[str, Any]) -> None:
    print(f"{size} px: PSNR >= {r['psnr_db']:.1f} dB, judge agrees on {r['judge_agreement']:.0%}, "
          f"mark {r['mark_ms']:.1f} ms/image, check {r['detect_ms']:.0f} ms/image")
    for name, f in r["attacks"].items():
        print(f"  {name:<32} found {f['found']:5.0%}  score min {f['min']:5.1f}  median {f['median']:5.1f}")
    u = r["unmarked"]
    print(f"  {'unmarked (false alarms)':<32} found {u['found']:5.0%}  score max {u['max']:5.1f}  "
          f"median {u['median']:5.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
