"""Evaluate a shapes-world model through the real pipeline and the model-free judge.

    python -m bench.eval_shapes [--model-dir weights/default] [-n 200] [--cases 40] [--seed 0] [--size 1024]

Runs every check of `tools.evaluation` (canonical-caption accuracy, partial-caption
variety, variations, text diffs, inpainting, generation time) at the model's default
sampling settings (or the overrides below) and its final size (or --size), prints a table with the
targets, and writes the JSON under bench/results/ (or --out). Exit status 0 either way:
the table says which targets are met.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from pipelines.checkpoints import dtype_named, load_model_dir
from pipelines.dtypes import DTYPE_NAMES
from pipelines.unclip import Sampling, UnCLIP
from server.requests.quality import STEP_SCALE
from tools.evaluation import card_section, evaluate, table, write_card

ROOT = Path(__file__).resolve().parents[1]

OVERRIDES = {"prior-steps": int, "decoder-steps": int, "upsampler-steps": int, "best-of": int,
             "prior-guidance": float, "decoder-guidance": float}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a shapes-world model with the model-free judge.")
    p.add_argument("--model-dir", type=Path, default=ROOT / "weights" / "default")
    p.add_argument("-n", type=int, default=200, help="random canonical captions (default 200)")
    p.add_argument("--cases", type=int, default=40, help="variations, text diffs and inpaintings each (default 40)")
    p.add_argument("--variety-seeds", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, help="output size (default the model's largest)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="auto",
                   help="the networks' dtype (auto: as the server picks it, `default_dtype`)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default bench/results/eval_shapes_<model>_<time>.json)")
    for flag, kind in OVERRIDES.items():
        p.add_argument(f"--{flag}", type=kind, default=None, help="override the model's default")
    p.add_argument("--decoder-sampler", choices=("ddpm", "ddim"), default=None)
    p.add_argument("--quality", choices=sorted(STEP_SCALE), default=None,
                   help="the server's step preset (server/requests/quality.py); explicit steps still win")
    p.add_argument("--write-card", action="store_true", help="put the table in the model directory's MODEL_CARD.md")
    return p


def sampling(args: argparse.Namespace) -> Sampling:
    keys = [f.replace("-", "_") for f in OVERRIDES] + ["decoder_sampler"]
    given = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    return Sampling(**given, step_scale=STEP_SCALE[args.quality] if args.quality else {})


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    pipe = UnCLIP(load_model_dir(args.model_dir, device, dtype_named(args.dtype)).use_channels_last())
    t0 = time.perf_counter()
    opts = sampling(args)
    res = evaluate(pipe, args.n, args.seed, args.cases, args.variety_seeds, opts, args.size)
    res |= {"model_dir": str(args.model_dir), "dtype": str(pipe.stack.dtype),
            "wall_s": time.perf_counter() - t0, "sampling": vars(opts)}
    print(table(res))
    out = args.out or ROOT / "bench" / "results" / f"eval_shapes_{pipe.cfg.name}_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wall time {res['wall_s']:.0f} s; wrote {out}")
    if args.write_card:
        command = "python -m bench.eval_shapes " + " ".join(argv if argv is not None else sys.argv[1:])
        write_card(args.model_dir / "MODEL_CARD.md", card_section(res, command.replace(" --write-card", "")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
