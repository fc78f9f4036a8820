"""Evaluate a shapes-world model through the real pipeline and the model-free judge.

Each check generates with `pipelines.operations` at the model's default sampling settings
(or `opts`) and the final size (or `size`), judges with `tools.shapes.judge`, and returns a JSON-able
dict. Operations run together through `run_many`, so their steps share batches.

- `captions`: N random canonical captions, one image each: per-attribute and all-five accuracy.
- `variety`: one partial caption (`a red circle`), many seeds: how often it is obeyed, and
  how many distinct positions and sizes fill in what it leaves open.
- `variations`: one variation (default eta) of each of n rendered random scenes: colour,
  shape and background kept.
- `text_diff`: n random scenes with a red shape, text diff towards the same caption with
  `blue` at theta = 0.5: turned blue, background kept.
- `inpaint`: n random scenes with a small shape in a corner; a central box is inpainted
  with `a large green square in the center on a {background} background`: the image's
  shape (the largest; the corner one is small) judged a green square in the center, the
  rest unchanged. (The box alone is not judged: a large square covers over half of it,
  which the judge rightly refuses as a shape.)

`THRESHOLDS` are the targets the shipped default model is held to; `verdicts` compares.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from pipelines import operations as O
from pipelines.imageio import to_uint8
from pipelines.sampling import upsample_for
from pipelines.unclip import Operation, Sampling, UnCLIP, run_direct, run_many
from tools.shapes import (
    ATTRIBUTES,
    COLOURS,
    Judgement,
    Scene,
    canonical_caption,
    judge_batch,
    random_scenes,
    render,
    score,
)
from tools.train.data import images_to_tensor

CHUNK = 8  # operations driven together
Caps = Optional[Mapping[str, int]]  # stage -> most tracks a call (None: no limit)
JUDGE_MIN = 128  # smaller images (e.g. the decoder's, in sampling sweeps) are resized to this
CORNERS = ("top left", "top right", "bottom left", "bottom right")
INPAINT_BOX = (0.3, 0.7)  # the edited square, fractions of the side
VARIETY_PROMPT = "a red circle"

# (path into the result, minimum): the targets for N = 200.
THRESHOLDS: dict[str, float] = {
    "captions.accuracy.colour": 0.95, "captions.accuracy.background": 0.95, "captions.accuracy.shape": 0.85,
    "captions.accuracy.position": 0.85, "captions.accuracy.size": 0.85, "captions.accuracy.all": 0.70,
    "variety.match": 1.0, "variety.positions": 4, "variety.sizes": 2,
    "variations.all": 0.90, "text_diff.rate": 0.80, "inpaint.rate": 0.80,
}
MAX_BACKGROUND_NOISE = 2.0  # the captions' median `background_noise` target (a render's is 0)


def scene_images(scenes: Sequence[Scene], size: int) -> torch.Tensor:
    """Scenes rendered without jitter: [n, 3, size, size] in [-1, 1]."""
    return images_to_tensor(render(list(scenes), size))


def judged(images: torch.Tensor) -> list[Judgement]:
    """Judge images [B, 3, S, S] in [-1, 1]; below JUDGE_MIN px they are first resized
    (bicubic) to it, as the upsamplers would (renders of the world judged so: 100%)."""
    if images.shape[-1] < JUDGE_MIN:
        images = upsample_for(images, JUDGE_MIN).clamp(-1, 1)
    return judge_batch(to_uint8(images))


def run_chunked(pipe: UnCLIP, make: Callable[[int], Operation], n: int, caps: Caps = None) -> list[O.OpResult]:
    """Results of make(0) .. make(n - 1), CHUNK operations at a time, each stage's calls
    at most caps[stage] tracks (default: all of the chunk's)."""
    out: list[O.OpResult] = []
    for start in range(0, n, CHUNK):
        out += run_many(pipe, [make(i) for i in range(start, min(n, start + CHUNK))], caps=caps)
    return out


def images_of(results: Sequence[O.OpResult], last: bool = False) -> torch.Tensor:
    """All images of the results [N, 3, S, S] (or only each result's last frame)."""
    return torch.cat([r.images[-1:] if last else r.images for r in results])


def kept(js: Sequence[Judgement], scenes: Sequence[Scene], attributes: Sequence[str]) -> dict[str, float]:
    """Per attribute, the fraction of judgements agreeing with their scene; `all`: on every one."""
    rows = [[getattr(j, a) == getattr(s, a) for a in attributes] for j, s in zip(js, scenes)]
    res = {a: float(np.mean([r[k] for r in rows])) for k, a in enumerate(attributes)}
    return res | {"all": float(np.mean([all(r) for r in rows])), "n": len(rows)}


def captions(pipe: UnCLIP, n: int, seed: int, opts: Optional[Sampling] = None,
             size: Optional[int] = None, caps: Caps = None) -> dict[str, Any]:
    """Accuracy over n random canonical captions (one image each, seed + i) at `size`
    (default: the final size), and the median of their `background_noise`."""
    scenes = random_scenes(n, np.random.default_rng(seed))
    texts = [canonical_caption(s) for s in scenes]
    results = run_chunked(pipe, lambda i: O.generate(pipe, texts[i], seed=seed + i, size=size, opts=opts), n, caps)
    images = images_of(results)
    js, noise = judged(images), background_noise(images)
    rows = [{"caption": t, "judged": j.attributes(), "background_noise": z} for t, j, z in zip(texts, js, noise)]
    return {"accuracy": score(js, scenes), "background_noise": statistics.median(noise), "samples": rows}


def variety(pipe: UnCLIP, seeds: int, seed: int, opts: Optional[Sampling] = None,
            size: Optional[int] = None, caps: Caps = None) -> dict[str, Any]:
    """`a red circle` with `seeds` seeds: matching fraction, distinct positions and sizes."""
    js = judged(run_direct(pipe, O.generate(pipe, VARIETY_PROMPT, n=seeds, seed=seed, size=size, opts=opts),
                                caps=caps).images)
    found = [j for j in js if j.shape is not None]
    return {
        "prompt": VARIETY_PROMPT, "n": seeds,
        "match": float(np.mean([j.colour == "red" and j.shape == "circle" for j in js])),
        "positions": len({j.position for j in found}), "sizes": len({j.size for j in found}),
        "backgrounds": len({j.background for j in js}), "judged": [j.attributes() for j in js],
    }


def variations(pipe: UnCLIP, n: int, seed: int, opts: Optional[Sampling] = None,
               size: Optional[int] = None, caps: Caps = None) -> dict[str, Any]:
    """One variation (default eta) of each of n random rendered scenes: what is kept."""
    scenes, size = random_scenes(n, np.random.default_rng(seed + 1)), size or pipe.sizes[-1]
    images = scene_images(scenes, size)
    results = run_chunked(pipe, lambda i: O.variations(pipe, images[i:i + 1], seed=seed + i, size=size, opts=opts),
                          n, caps)
    return kept(judged(images_of(results)), scenes, ("colour", "shape", "background"))


def red_scenes(n: int, seed: int) -> list[Scene]:
    """n random scenes with a red shape on a background neither red nor blue."""
    return [replace(s, colour="red", background="white" if s.background in ("red", "blue") else s.background)
            for s in random_scenes(n, np.random.default_rng(seed + 2))]


def text_diff(pipe: UnCLIP, n: int, seed: int, opts: Optional[Sampling] = None,
              size: Optional[int] = None, caps: Caps = None) -> dict[str, Any]:
    """Text diff from each red scene's caption to the same caption with `blue`, frame at
    theta = 0.5: `rate` is turned blue with the background kept."""
    scenes, size = red_scenes(n, seed), size or pipe.sizes[-1]
    blue = [replace(s, colour="blue") for s in scenes]
    images = scene_images(scenes, size)
    results = run_chunked(pipe, lambda i: O.text_diff(
        pipe, images[i:i + 1], canonical_caption(blue[i]), canonical_caption(scenes[i]), frames=2, max_theta=0.5,
        seed=seed + i, size=size, opts=opts), n, caps)
    js = judged(images_of(results, last=True))
    ok = [j.colour == "blue" and j.background == s.background for j, s in zip(js, scenes)]
    return {"rate": float(np.mean(ok)), "blue": float(np.mean([j.colour == "blue" for j in js])),
            "background": float(np.mean([j.background == s.background for j, s in zip(js, scenes)])),
            "shape": float(np.mean([j.shape == s.shape for j, s in zip(js, scenes)])), "n": n}


def inpaint_bases(n: int, seed: int) -> list[Scene]:
    """n random scenes with a small shape in a corner (outside the box), nothing green."""
    rng = np.random.default_rng(seed + 3)
    free = [c for c in COLOURS if c != "green"]
    out = []
    for s in random_scenes(n, rng):
        colour, background = rng.choice(free, size=2, replace=False)
        out.append(replace(s, colour=str(colour), background=str(background), size="small",
                           position=CORNERS[int(rng.integers(len(CORNERS)))]))
    return out


def box_mask(size: int) -> torch.Tensor:
    """keep [1, 1, size, size]: 0 in the central box, 1 elsewhere."""
    lo, hi = (int(round(f * size)) for f in INPAINT_BOX)
    keep = torch.ones(1, 1, size, size)
    keep[..., lo:hi, lo:hi] = 0.0
    return keep


def inpaint(pipe: UnCLIP, n: int, seed: int, opts: Optional[Sampling] = None,
            size: Optional[int] = None, caps: Caps = None) -> dict[str, Any]:
    """Inpaint a large green square into the central box of n scenes: `rate` is the image
    judged a green square in the center; `kept_max_abs_diff` the largest change outside
    the box."""
    scenes, size = inpaint_bases(n, seed), size or pipe.sizes[-1]
    images, keep = scene_images(scenes, size), box_mask(size)
    prompts = [canonical_caption(replace(s, shape="square", colour="green", size="large", position="center"))
               for s in scenes]
    results = run_chunked(pipe, lambda i: O.inpaint(pipe, images[i:i + 1], keep, prompts[i], seed=seed + i,
                                                    size=size, opts=opts), n, caps)
    out = images_of(results)
    return {**inpaint_scores(out), "n": n, "kept_max_abs_diff": float(((out - images).abs() * keep).max())}


def inpaint_scores(images: torch.Tensor) -> dict[str, float]:
    """Inpainted images [n, 3, S, S]: fractions judged green, square, in the center, and all three (`rate`)."""
    js = judged(images)
    return {"rate": float(np.mean([(j.colour, j.shape, j.position) == ("green", "square", "center") for j in js])),
            "green": float(np.mean([j.colour == "green" for j in js])),
            "square": float(np.mean([j.shape == "square" for j in js])),
            "center": float(np.mean([j.position == "center" for j in js]))}


def background_noise(images: torch.Tensor) -> list[float]:
    """Per image of [n, 3, S, S] in [-1, 1]: the median over channels of the standard
    deviation (0-255 scale) of the top and bottom bands, S / 16 rows each."""
    x, band = (images.clamp(-1, 1) + 1) * 127.5, max(1, images.shape[-2] // 16)
    bands = torch.cat([x[..., :band, :].flatten(2), x[..., -band:, :].flatten(2)], dim=2)  # [n, 3, pixels]
    return bands.std(dim=2).median(dim=1).values.tolist()


def generation_seconds(pipe: UnCLIP, seed: int, opts: Optional[Sampling] = None, repeats: int = 3,
                       size: Optional[int] = None) -> float:
    """Median wall time of one generation (n = 1) at `size` (default: the final size)."""
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        run_direct(pipe, O.generate(pipe, "a small blue square at the top on a yellow background", seed=seed + r,
                                    size=size, opts=opts))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def evaluate(pipe: UnCLIP, n: int, seed: int = 0, cases: int = 40, seeds: int = 16,
             opts: Optional[Sampling] = None, size: Optional[int] = None, caps: Caps = None) -> dict[str, Any]:
    """Every check at `size` (default: the final size): n canonical captions, `cases`
    variations / text diffs / inpaintings, `seeds` seeds of the partial caption, and the
    generation time; the operations' stage calls at most caps[stage] tracks (batching
    changes no result, only the time)."""
    size = size or pipe.sizes[-1]
    return {
        "model": pipe.cfg.name, "size": size, "seed": seed,
        "captions": captions(pipe, n, seed, opts, size, caps), "variety": variety(pipe, seeds, seed, opts, size, caps),
        "variations": variations(pipe, cases, seed, opts, size, caps),
        "text_diff": text_diff(pipe, cases, seed, opts, size, caps),
        "inpaint": inpaint(pipe, cases, seed, opts, size, caps),
        "generation_s": generation_seconds(pipe, seed, opts, size=size),
    }


def lookup(res: dict[str, Any], path: str) -> float:
    """res["a"]["b"] for path "a.b"."""
    for key in path.split("."):
        res = res[key]
    return float(res)  # type: ignore[arg-type]


def verdicts(res: dict[str, Any],
             thresholds: Optional[dict[str, float]] = None) -> dict[str, tuple[float, float, bool]]:
    """Per threshold path: (measured, minimum, met)."""
    out = {}
    for path, minimum in (thresholds or THRESHOLDS).items():
        value = lookup(res, path)
        out[path] = (value, minimum, value >= minimum)
    return out


def table(res: dict[str, Any]) -> str:
    """The human-readable summary with each target and whether it is met."""
    acc = res["captions"]["accuracy"]
    lines = [f"model {res['model']}, {res['size']} px, N={int(acc['n'])}, seed {res['seed']}",
             f"{'attribute':<12} accuracy"]
    lines += [f"{a:<12} {acc.get(a, 0.0):8.3f}" for a in ATTRIBUTES] + [f"{'all five':<12} {acc['all']:8.3f}"]
    lines += [f"background noise sigma (0-255, median): {res['captions']['background_noise']:.2f} "
              f"(target <= {MAX_BACKGROUND_NOISE})", ""]
    v = res["variety"]
    lines.append(f"variety '{v['prompt']}' x{v['n']}: red circles {v['match']:.2f}, positions {v['positions']}, "
                 f"sizes {v['sizes']}, backgrounds {v['backgrounds']}")
    va, td, ip = res["variations"], res["text_diff"], res["inpaint"]
    lines.append(f"variations (n={va['n']}): colour {va['colour']:.2f} shape {va['shape']:.2f} "
                 f"background {va['background']:.2f} all three {va['all']:.2f}")
    lines.append(f"text diff red->blue at theta 0.5 (n={td['n']}): blue with background kept {td['rate']:.2f} "
                 f"(blue {td['blue']:.2f}, background {td['background']:.2f}, shape {td['shape']:.2f})")
    lines.append(f"inpaint green square (n={ip['n']}): {ip['rate']:.2f} (green {ip['green']:.2f}, square "
                 f"{ip['square']:.2f}, center {ip['center']:.2f}), "
                 f"kept region max |diff| {ip['kept_max_abs_diff']:.3g}")
    lines.append(f"one generation at {res['size']} px: {res['generation_s']:.2f} s (median of 3)")
    lines += ["", f"{'target':<32} {'measured':>9} {'minimum':>8}  met"]
    lines += [f"{p:<32} {v:9.3f} {m:8.3f}  {'yes' if ok else 'NO'}" for p, (v, m, ok) in verdicts(res).items()]
    return "\n".join(lines)


CARD_HEADING = "## Evaluation"


def card_section(res: dict[str, Any], command: str) -> str:
    """The model card's evaluation section: the command, the date and the table."""
    return "\n".join([CARD_HEADING, "", f"`{command}` ({time.strftime('%Y-%m-%d')}, this machine's CPU, "
                      f"{res.get('wall_s', 0) / 60:.0f} min):", "", "```", table(res), "```", ""])


def write_card(card: Path, section: str) -> None:
    """Replace (or append) the evaluation section of a MODEL_CARD.md."""
    text = card.read_text() if card.exists() else ""
    head = text.split(CARD_HEADING)[0].rstrip("\n")
    card.write_text((head + "\n\n" if head else "") + section)
