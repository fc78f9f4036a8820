"""fp32 against a lower-precision dtype on a model (default the shipped one), as the server
runs it (channels-last): seconds per generation, measured alternately in one run, how far
the images move (mean and max |diff| in 1/255), and the lower precision's batch invariance
(the n images generated together against one at a time).

    .venv/bin/python -m bench.precision [--model-dir weights/default] [--size 256] [-n 1] \
        [--dtype bfloat16] [--repeats 3]

Accuracy at each dtype: `python -m bench.eval_shapes --dtype D`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from bench import write_result
from bench.quality import PROMPT
from pipelines.checkpoints import load_model_dir
from pipelines.operations import generate
from pipelines.unclip import UnCLIP, run_direct

ROOT = Path(__file__).resolve().parents[1]


def timed(pipe: UnCLIP, n: int, size: int, seed: int, max_batch: int = 64) -> tuple[float, torch.Tensor]:
    """(seconds, images [n, 3, size, size] in [-1, 1]) of one generation."""
    started = time.perf_counter()
    with torch.inference_mode():
        images = run_direct(pipe, generate(pipe, PROMPT, n=n, seed=seed, size=size), max_batch).images
    return time.perf_counter() - started, images


def in_255(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean and max |a - b| of images in [-1, 1], in 1/255 units."""
    d = (a.float() - b.float()).abs() * 255 / 2
    return float(d.mean()), float(d.max())


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=ROOT / "weights" / "default")
    ap.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("-n", type=int, default=1, help="images per generation")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtypes = (torch.float32, getattr(torch, args.dtype))
    pipes = {dt: UnCLIP(load_model_dir(args.model_dir, "cpu", dt).use_channels_last()) for dt in dtypes}
    for pipe in pipes.values():  # warm-up
        timed(pipe, args.n, args.size, 0)
    seconds: dict[torch.dtype, list[float]] = {dt: [] for dt in dtypes}
    images: dict[torch.dtype, torch.Tensor] = {}
    for r in range(args.repeats):
        for dt in (dtypes if r % 2 == 0 else dtypes[::-1]):
            s, images[dt] = timed(pipes[dt], args.n, args.size, seed=1)
            seconds[dt].append(s)
    low = dtypes[1]
    _, alone = timed(pipes[low], args.n, args.size, seed=1, max_batch=1)
    med = {str(dt): statistics.median(s) for dt, s in seconds.items()}
    out = {"model_dir": str(args.model_dir), "size": args.size, "n": args.n, "seconds": med,
           "speedup": med["torch.float32"] / med[str(low)],
           "diff_vs_fp32_255": in_255(images[torch.float32], images[low]),
           "batch_invariance_255": in_255(images[low], alone)[0], "torch": torch.__version__}
    print(f"{args.size} px, n={args.n}: fp32 {med['torch.float32']:.3f} s, {args.dtype} {med[str(low)]:.3f} s "
          f"({out['speedup']:.2f}x); |fp32 - {args.dtype}| mean {out['diff_vs_fp32_255'][0]:.2f}/255, "
          f"max {out['diff_vs_fp32_255'][1]:.0f}/255; {args.dtype} batched vs alone "
          f"{out['batch_invariance_255']:.2f}/255 mean")
    print(f"wrote {write_result('precision', out)}")
    return out


if __name__ == "__main__":
    main()
