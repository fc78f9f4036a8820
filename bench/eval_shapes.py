"""Evaluate a shapes-world model through the real pipeline and the model-free judge.

    python bench/eval_shapes.py [--model-dir weights/default] [-n 64] [--seed 0]

1. N random canonical captions, each generated with `pipelines.operations.generate` via
   `run_direct` (the model's default settings, final size), judged by `tools.shapes.judge`:
   per-attribute and all-five accuracy.
2. Variety: `a red circle` with 16 seeds: how many are judged red circles, and how many
   distinct positions, sizes and backgrounds they show.
3. Variations of rendered scenes keep colour, shape and background.
4. Text diff red -> blue at theta = 0.5 turns a red circle blue.
5. Inpainting a green square into an edited box: judged green square there, the kept
   region unchanged.
6. Wall time of one generation at the final size.

Prints a table and writes JSON under bench/results/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines import operations as O  # noqa: E402
from pipelines.checkpoints import load_model_dir  # noqa: E402
from pipelines.imageio import to_uint8  # noqa: E402
from pipelines.unclip import Sampling, UnCLIP, run_direct  # noqa: E402
from tools.shapes import ATTRIBUTES, Judgement, Scene, canonical_caption, judge_batch, random_scenes, render, score  # noqa: E402

VARIATION_SCENES = (
    Scene("circle", "red", "white", "large", "center"),
    Scene("triangle", "yellow", "blue", "large", "top left"),
)
TEXT_DIFF_SCENE = Scene("circle", "red", "white", "large", "center")
INPAINT_BASE = Scene("circle", "red", "white", "small", "top left")
INPAINT_PROMPT = "a large green square in the center on a white background"
INPAINT_BOX = (0.3, 0.7)  # edited square, fractions of the side


def scene_image(scene: Scene, size: int) -> torch.Tensor:
    """A scene rendered without jitter: [1, 3, size, size] in [-1, 1]."""
    return torch.from_numpy(render([scene], size)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def judged(images: torch.Tensor) -> list[Judgement]:
    """Judge images [B, 3, S, S] in [-1, 1]."""
    return judge_batch(to_uint8(images))


def timed(fn: Callable[[], O.OpResult]) -> tuple[O.OpResult, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def eval_captions(pipe: UnCLIP, n: int, seed: int, opts: Sampling, size: Optional[int]) -> dict:
    """Accuracy over n random canonical captions (one image each, seed + i)."""
    scenes = random_scenes(n, np.random.default_rng(seed))
    rows, times, images = [], [], []
    for i, scene in enumerate(scenes):
        prompt = canonical_caption(scene)
        out, dt = timed(lambda: run_direct(pipe, O.generate(pipe, prompt, n=1, seed=seed + i, size=size, opts=opts)))
        images.append(out.images)
        times.append(dt)
    judgements = judged(torch.cat(images))
    for scene, j in zip(scenes, judgements):
        rows.append({"caption": canonical_caption(scene), "judged": j.attributes(),
                     "right": {a: getattr(j, a) == getattr(scene, a) for a in ATTRIBUTES}})
    return {"accuracy": score(judgements, scenes), "median_s": statistics.median(times), "samples": rows}


def eval_variety(pipe: UnCLIP, seeds: int, seed: int, opts: Sampling, size: Optional[int], prompt: str = "a red circle") -> dict:
    """One prompt, `seeds` seeds: matching fraction and distinct positions / sizes / backgrounds."""
    out = run_direct(pipe, O.generate(pipe, prompt, n=seeds, seed=seed, size=size, opts=opts))
    js = judged(out.images)
    match = [j.colour == "red" and j.shape == "circle" for j in js]
    found = [j for j in js if j.shape is not None]
    return {
        "prompt": prompt, "n": seeds, "match": float(np.mean(match)),
        "positions": len({j.position for j in found}), "sizes": len({j.size for j in found}),
        "backgrounds": len({j.background for j in js}), "judged": [j.attributes() for j in js],
    }


def kept(js: Sequence[Judgement], scene: Scene, attributes: Sequence[str]) -> dict[str, float]:
    """Fraction of judgements agreeing with the scene on each attribute."""
    return {a: float(np.mean([getattr(j, a) == getattr(scene, a) for j in js])) for a in attributes}


def eval_variations(pipe: UnCLIP, seed: int, opts: Sampling, n: int = 4) -> dict:
    """Variations (default eta) of rendered scenes: do colour, shape and background stay?"""
    size, rows = pipe.sizes[-1], []
    for scene in VARIATION_SCENES:
        out = run_direct(pipe, O.variations(pipe, scene_image(scene, size), n=n, seed=seed, opts=opts))
        rows.append(kept(judged(out.images), scene, ("colour", "shape", "background")))
    return {a: float(np.mean([r[a] for r in rows])) for a in rows[0]} | {"images": n * len(rows)}


def eval_text_diff(pipe: UnCLIP, seed: int, opts: Sampling) -> dict:
    """Text diff red -> blue (source and target canonical captions), frame at theta = 0.5."""
    src, dst = TEXT_DIFF_SCENE, replace(TEXT_DIFF_SCENE, colour="blue")
    image = scene_image(src, pipe.sizes[-1])
    out = run_direct(pipe, O.text_diff(pipe, image, canonical_caption(dst), canonical_caption(src), frames=2,
                                       max_theta=0.5, seed=seed, opts=opts))
    j = judged(out.images[-1:])[0]
    return {"judged": j.attributes(), "blue": j.colour == "blue", "shape_kept": j.shape == src.shape,
            "background_kept": j.background == src.background}


def eval_inpaint(pipe: UnCLIP, seed: int, opts: Sampling) -> dict:
    """Inpaint a green square into the central box of a scene; judge the box, check the rest."""
    size = pipe.sizes[-1]
    image = scene_image(INPAINT_BASE, size)
    lo, hi = (int(round(f * size)) for f in INPAINT_BOX)
    keep = torch.ones(1, 1, size, size)
    keep[..., lo:hi, lo:hi] = 0.0
    out = run_direct(pipe, O.inpaint(pipe, image, keep, INPAINT_PROMPT, n=1, seed=seed, opts=opts))
    j = judged(out.images[..., lo:hi, lo:hi])[0]
    drift = float(((out.images - image).abs() * keep).max())
    return {"judged_box": j.attributes(), "green": j.colour == "green", "square": j.shape == "square",
            "kept_max_abs_diff": drift}


def table(model: str, size: int, res: dict) -> str:
    """The human-readable summary."""
    acc, v = res["captions"]["accuracy"], res["variety"]
    lines = [f"model {model}, {size} px, N={int(acc['n'])}, seed {res['seed']}", f"{'attribute':<12} accuracy"]
    lines += [f"{a:<12} {acc.get(a, 0.0):8.3f}" for a in ATTRIBUTES] + [f"{'all five':<12} {acc['all']:8.3f}", ""]
    lines.append(f"variety '{v['prompt']}' x{v['n']}: red circles {v['match']:.2f}, positions {v['positions']}, "
                 f"sizes {v['sizes']}, backgrounds {v['backgrounds']}")
    va = res["variations"]
    lines.append(f"variations ({va['images']} images): colour {va['colour']:.2f} shape {va['shape']:.2f} background {va['background']:.2f}")
    td = res["text_diff"]
    lines.append(f"text diff red->blue at theta 0.5: blue {td['blue']}, shape kept {td['shape_kept']}, "
                 f"background kept {td['background_kept']} (judged {td['judged']})")
    ip = res["inpaint"]
    lines.append(f"inpaint green square: green {ip['green']}, square {ip['square']}, kept region max |diff| {ip['kept_max_abs_diff']:.3g}")
    lines.append(f"one generation at {size} px: {res['generation_s']:.2f} s (median over captions {res['captions']['median_s']:.2f} s)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a shapes-world model with the model-free judge.")
    p.add_argument("--model-dir", type=Path, default=ROOT / "weights" / "default")
    p.add_argument("-n", type=int, default=64, help="random canonical captions (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variety-seeds", type=int, default=16)
    p.add_argument("--size", type=int, default=None, help="output size (default: the final size)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/eval_shapes_<model>_<time>.json)")
    for flag in ("prior-steps", "decoder-steps", "upsampler-steps", "best-of"):
        p.add_argument(f"--{flag}", type=int, default=None, help="override the model's default")
    for flag in ("prior-guidance", "decoder-guidance"):
        p.add_argument(f"--{flag}", type=float, default=None, help="override the model's default")
    p.add_argument("--decoder-sampler", choices=("ddpm", "ddim"), default=None)
    return p


def sampling(args: argparse.Namespace) -> Sampling:
    keys = ("prior_steps", "decoder_steps", "upsampler_steps", "best_of", "prior_guidance", "decoder_guidance", "decoder_sampler")
    return Sampling(**{k: getattr(args, k) for k in keys})


def evaluate(pipe: UnCLIP, args: argparse.Namespace) -> dict:
    """Every check of the module docstring, as one JSON-able dict."""
    opts, size = sampling(args), args.size
    res = {"model_dir": str(args.model_dir), "model": pipe.cfg.name, "seed": args.seed, "size": size or pipe.sizes[-1]}
    res["captions"] = eval_captions(pipe, args.n, args.seed, opts, size)
    res["variety"] = eval_variety(pipe, args.variety_seeds, args.seed, opts, size)
    res["variations"] = eval_variations(pipe, args.seed, opts)
    res["text_diff"] = eval_text_diff(pipe, args.seed, opts)
    res["inpaint"] = eval_inpaint(pipe, args.seed, opts)
    _, res["generation_s"] = timed(lambda: run_direct(pipe, O.generate(pipe, "a small blue square at the top on a yellow background", seed=args.seed, size=size, opts=opts)))
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    pipe = UnCLIP(load_model_dir(args.model_dir, device))
    res = evaluate(pipe, args)
    print(table(pipe.cfg.name, res["size"], res))
    out = args.out or ROOT / "bench" / "results" / f"eval_shapes_{pipe.cfg.name}_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
