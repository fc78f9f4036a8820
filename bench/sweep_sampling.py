"""Choose sampling defaults by measurement: canonical-caption accuracy over a grid of settings.

    python -m bench.sweep_sampling --model-dir weights/default -n 48 --size 32 \\
        --grid decoder_guidance=1.5,3,5 prior_guidance=1,2,4

Every combination of the grid (fields of `pipelines.unclip.Sampling`; unnamed ones keep the
model's defaults) generates the same n random canonical captions with the same seeds, at
`--size` (e.g. the decoder's, to sweep the prior and decoder quickly; judged after a bicubic
resize, see `tools.evaluation.judged`) or the final size, and is judged. Prints one row per
combination: per-attribute and all-five accuracy and seconds per image; writes the JSON
under bench/results/. Apply the choice with `python -m tools.train export --set ...`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from pipelines.checkpoints import load_model_dir
from pipelines.unclip import Sampling, UnCLIP
from tools.evaluation import captions
from tools.shapes import ATTRIBUTES

ROOT = Path(__file__).resolve().parents[1]

KINDS = {f.name: f.type for f in fields(Sampling) if f.name not in ("latents", "screen")}


def parse_axis(item: str) -> tuple[str, list[Any]]:
    """"decoder_guidance=1.5,3" -> ("decoder_guidance", [1.5, 3.0])."""
    name, _, values = item.partition("=")
    if name not in KINDS or not values:
        raise SystemExit(f"--grid {item!r}: expected FIELD=V1,V2 with FIELD one of {sorted(KINDS)}")
    cast = str if "str" in str(KINDS[name]) else (int if "int" in str(KINDS[name]) else float)
    try:
        return name, [cast(v) for v in values.split(",")]
    except ValueError:
        raise SystemExit(f"--grid {item!r}: {name} takes {cast.__name__} values") from None


def combinations(axes: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """The cartesian product of the axes, as Sampling keyword dicts."""
    names = [a[0] for a in axes]
    return [dict(zip(names, values)) for values in itertools.product(*(a[1] for a in axes))]


def sweep(pipe: UnCLIP, combos: list[dict[str, Any]], n: int, seed: int, size: Optional[int]) -> list[dict[str, Any]]:
    """One row per combination: the settings, the accuracy dict and seconds per image."""
    rows = []
    for combo in combos:
        t0 = time.perf_counter()
        acc = captions(pipe, n, seed, Sampling(**combo), size)["accuracy"]
        rows.append({"settings": combo, "accuracy": acc, "s_per_image": (time.perf_counter() - t0) / n})
        print(row_text(rows[-1]), flush=True)
    return rows


def row_text(row: dict[str, Any]) -> str:
    settings = " ".join(f"{k}={v}" for k, v in row["settings"].items()) or "(defaults)"
    acc = row["accuracy"]
    return f"{settings:<48} " + " ".join(f"{acc[a]:6.3f}" for a in (*ATTRIBUTES, "all")) + f" {row['s_per_image']:7.2f}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Canonical-caption accuracy over a grid of sampling settings.")
    p.add_argument("--model-dir", type=Path, default=ROOT / "weights" / "default")
    p.add_argument("-n", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, help="output size (default: the final size)")
    p.add_argument("--grid", nargs="+", default=[], metavar="FIELD=V1,V2")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    pipe = UnCLIP(load_model_dir(args.model_dir, "cuda" if torch.cuda.is_available() else "cpu"))
    print(f"{'settings':<48} " + " ".join(f"{a[:6]:>6}" for a in (*ATTRIBUTES, "all")) + f" {'s/img':>7}")
    rows = sweep(pipe, combinations([parse_axis(g) for g in args.grid]), args.n, args.seed, args.size)
    out = args.out or ROOT / "bench" / "results" / f"sweep_{pipe.cfg.name}_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model_dir": str(args.model_dir), "n": args.n, "size": args.size, "rows": rows},
                              indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
