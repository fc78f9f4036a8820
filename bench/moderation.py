"""Moderation in CLIP space on a model (default the shipped shapes model), with one blocked
concept it can draw (default `a red circle`): how many prompts of that concept are refused
(at the prompt or at the prior's image embedding), how many other prompts are served, how
many uploads (renders of the world) are refused or served, the similarities each stage
sees (to calibrate the thresholds), and the latency the checks add.

    .venv/bin/python -m bench.moderation [--model-dir weights/default] [-n 48] \
        [--concept "a red circle"] [--threshold 0.40] [--prompt-threshold 0.80] [--margin 0]

Prompts vary size, position and background words of the shapes world; "other" prompts
name another shape or another colour (the hardest: a red square, a green circle). The
prior runs with the model's default steps and best-of, as the server does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from bench import write_result
from pipelines.checkpoints import load_model_dir
from pipelines.errors import ContentRefused
from pipelines.moderation import (
    DEFAULT_PROMPT_THRESHOLD,
    DEFAULT_THRESHOLD,
    Concept,
    Screen,
    encode_concepts,
    similarities,
)
from pipelines.unclip import Operation, Sampling, StagedPipeline, UnCLIP, make_generator, run_many
from tools.evaluation import scene_images
from tools.shapes import Scene, caption_for, random_scene

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("size", "position", "background")  # the words a prompt may add to colour and shape
UPLOAD_SIDE = 256  # renders for the upload rates (CLIP sees 64 px); the latency uses the largest size


def is_red_circle(scene: Scene) -> bool:
    return scene.shape == "circle" and scene.colour == "red"


def scenes(blocked: bool, n: int, seed: int) -> list[Scene]:
    """n random scenes of the shapes world that are (blocked) or are not red circles."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        scene = random_scene(rng)
        if is_red_circle(scene) == blocked:
            out.append(scene)
    return out


def prompts(blocked: bool, n: int, seed: int = 0) -> list[str]:
    """n prompts naming a red circle (blocked) or another shape or colour, each with a
    random subset of size, position and background words."""
    rng = np.random.default_rng(seed + 1)
    return [caption_for(s, ("colour", "shape") + tuple(a for a in OPTIONAL if rng.random() < 0.5))
            for s in scenes(blocked, n, seed)]


def refusal(screen: Screen, stage: str, z: torch.Tensor) -> Optional[str]:
    """The stage if the screen refuses z [1, D] there, else None."""
    try:
        screen.check(stage, z)
    except ContentRefused as refused:
        return refused.stage
    return None


def decisions(screen: Screen, texts: torch.Tensor, priors: torch.Tensor) -> list[Optional[str]]:
    """Where the server refuses each prompt: "prompt" (its text embedding, texts [n, D]),
    "prior" (its prior embedding, priors [n, D]), or None: served."""
    return [refusal(screen, "prompt", t[None]) or refusal(screen, "prior", z[None]) for t, z in zip(texts, priors)]


def prior_only(pipe: StagedPipeline, prompt: str, seed: int, opts: Sampling) -> Operation:
    """The prior's chosen embedding [1, D] of a prompt, as `generate` samples it."""
    return (yield from pipe.sample_prior(pipe.encode_text([prompt]), [seed], [make_generator(seed)], opts))


def prior_embeddings(pipe: StagedPipeline, texts: Sequence[str]) -> torch.Tensor:
    """The prior's chosen embeddings [n, D] of the prompts (seed i for prompt i)."""
    return torch.cat(run_many(pipe, [prior_only(pipe, p, i, Sampling()) for i, p in enumerate(texts)]))


def spread(values: torch.Tensor) -> dict[str, float]:
    """Min, median and max of similarities [n, 1]."""
    v = values.flatten()
    return {"min": round(float(v.min()), 3), "median": round(float(v.median()), 3), "max": round(float(v.max()), 3)}


def latency_ms(pipe: StagedPipeline, screen: Screen, prompt: str, image: torch.Tensor, repeats: int = 20) -> dict:
    """Milliseconds each check adds: the prompt's (a CLIP text encoding), the prior's (on an
    embedding already there) and an upload's (a CLIP image encoding of `image` [1, 3, S, S],
    as large as the server keeps uploads)."""
    z = pipe.encode_text(["a blue square"]).pooled
    checks = {"prompt": lambda: screen.check("prompt", pipe.encode_text([prompt]).pooled),
              "prior": lambda: screen.check("prior", z),
              "upload": lambda: screen.check("upload", pipe.encode_image(image))}
    out = {}
    for stage, check in checks.items():
        check()
        started = time.perf_counter()
        for _ in range(repeats):
            check()
        out[stage] = round((time.perf_counter() - started) / repeats * 1000, 3)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.moderation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "weights" / "default")
    parser.add_argument("-n", type=int, default=48, help="prompts (and uploads) of each kind")
    parser.add_argument("--concept", default="a red circle")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--prompt-threshold", type=float, default=DEFAULT_PROMPT_THRESHOLD)
    parser.add_argument("--margin", type=float, default=0.0, help="added to both (moderation=low: 0.05)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pipe = UnCLIP(load_model_dir(args.model_dir, "cpu", torch.float32))
    concepts = encode_concepts(pipe, [Concept(args.concept, args.threshold, args.prompt_threshold)])
    screen = Screen(concepts, args.margin)
    blocked, other = prompts(True, args.n), prompts(False, args.n)
    with torch.inference_mode():
        texts = {k: pipe.encode_text(v).pooled for k, v in (("blocked", blocked), ("other", other))}
        started = time.perf_counter()
        priors = {k: prior_embeddings(pipe, v) for k, v in (("blocked", blocked), ("other", other))}
        prior_ms = (time.perf_counter() - started) / (2 * args.n) * 1000
        stages = decisions(screen, texts["blocked"], priors["blocked"]) + decisions(screen, texts["other"],
                                                                                   priors["other"])
        refused_blocked = [s for s in stages[:args.n] if s is not None]
        served_other = [s for s in stages[args.n:] if s is None]
        images = {k: scene_images(scenes(b, args.n, 7), UPLOAD_SIDE) for k, b in (("blocked", True), ("other", False))}
        embedded = {k: pipe.encode_image(v) for k, v in images.items()}
        uploads = {k: [refusal(screen, "upload", z[None]) for z in v] for k, v in embedded.items()}
        sims = {"prompt": texts, "prior": priors, "upload": embedded}
        latency = latency_ms(pipe, screen, other[0], scene_images(scenes(False, 1, 7), max(pipe.sizes)))
    result = {
        "model": str(args.model_dir), "concept": args.concept, "threshold": args.threshold,
        "prompt_threshold": args.prompt_threshold, "margin": args.margin, "n": args.n,
        "blocked_prompts_refused": len(refused_blocked) / args.n,
        "refused_at": {s: refused_blocked.count(s) for s in ("prompt", "prior")},
        "other_prompts_served": len(served_other) / args.n,
        "blocked_uploads_refused": sum(s is not None for s in uploads["blocked"]) / args.n,
        "other_uploads_served": sum(s is None for s in uploads["other"]) / args.n,
        "similarities": {stage: {k: spread(similarities(v, concepts.embeddings)) for k, v in by.items()}
                         for stage, by in sims.items()},
        "added_ms": latency, "prior_ms_per_prompt": round(prior_ms, 1),
    }
    report(result)
    print(f"wrote {write_result('moderation', result)}")
    return 0


def report(r: dict) -> None:
    print(f"concept {r['concept']!r}: threshold {r['threshold']}, prompt threshold {r['prompt_threshold']}, "
          f"margin {r['margin']}, {r['n']} prompts of each kind")
    print(f"  blocked prompts refused {r['blocked_prompts_refused']:.1%} (at {r['refused_at']}); "
          f"other prompts served {r['other_prompts_served']:.1%}")
    print(f"  blocked uploads refused {r['blocked_uploads_refused']:.1%}; "
          f"other uploads served {r['other_uploads_served']:.1%}")
    for stage, by in r["similarities"].items():
        print(f"  {stage:6s} cosine: blocked {by['blocked']}, other {by['other']}")
    print(f"  added ms per request: {r['added_ms']}; the prior alone: {r['prior_ms_per_prompt']} ms/prompt")


if __name__ == "__main__":
    raise SystemExit(main())
