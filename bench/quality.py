"""What each quality preset (server/requests/quality.py) costs and gives on a model: seconds per
generation at one size (default the largest), measured alternately in one run so that the
ratios hold on a noisy machine, and the grain of flat backgrounds (median per-channel
standard deviation of the top and bottom bands, each 1/16 of the side; 0 for a render of
the shapes world). Attribute accuracy per preset comes from
`python -m bench.eval_shapes --quality Q`.

    .venv/bin/python -m bench.quality [--model-dir weights/default] [--size 256] [--repeats 3] \
        [--grain-per-prompt 2] [--presets medium]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from pipelines.checkpoints import load_model_dir
from pipelines.operations import generate
from pipelines.unclip import Sampling, UnCLIP, run_direct, run_many
from server.requests.quality import STEP_SCALE
from tools.evaluation import background_noise

PROMPT = "a small red circle at the top left on a blue background"
GRAIN_PROMPTS = ("a small red circle at the top left on a blue background",
                 "a large green square in the center on a white background",
                 "a small yellow triangle at the bottom right on a purple background",
                 "a large blue circle on the left on an orange background")


def seconds(pipe: UnCLIP, preset: str, seed: int, size: Optional[int] = None) -> float:
    """One generation at `size` (default the largest) with the preset's steps."""
    started = time.perf_counter()
    run_direct(pipe, generate(pipe, PROMPT, seed=seed, size=size, opts=Sampling(step_scale=STEP_SCALE[preset])))
    return time.perf_counter() - started


def grain(pipe: UnCLIP, preset: str, per_prompt: int = 2, size: Optional[int] = None) -> float:
    """Median background noise over `per_prompt` images of each grain prompt at `size`."""
    opts = Sampling(step_scale=STEP_SCALE[preset])
    ops = [generate(pipe, p, n=per_prompt, seed=10 + i, size=size, opts=opts) for i, p in enumerate(GRAIN_PROMPTS)]
    return statistics.median(sum((background_noise(r.images) for r in run_many(pipe, ops, max_batch=8)), []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path("weights/default"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--grain-per-prompt", type=int, default=2, help="images of each of the 4 grain prompts")
    p.add_argument("--size", type=int, default=None, help="output size (default the model's largest)")
    p.add_argument("--presets", nargs="*", choices=sorted(STEP_SCALE), default=list(STEP_SCALE))
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    pipe = UnCLIP(load_model_dir(args.model_dir).use_channels_last())  # as the server runs it
    size = args.size or max(pipe.sizes)
    seconds(pipe, "medium", 0, size)  # warm-up
    times: dict[str, list[float]] = {preset: [] for preset in args.presets}
    for r in range(args.repeats):
        for preset in args.presets:
            times[preset].append(seconds(pipe, preset, r, size))
    base = statistics.median(times.get("medium") or next(iter(times.values())))
    print(f"{pipe.cfg.name} at {size} px")
    for preset, ts in times.items():
        steps = pipe.settings_of(Sampling(step_scale=STEP_SCALE[preset]))
        print(f"{preset:<7} {statistics.median(ts):6.2f} s ({statistics.median(ts) / base:.2f}x medium)  "
              f"background noise {grain(pipe, preset, args.grain_per_prompt, size):5.2f}  "
              f"prior {steps['prior_steps']}, decoder {steps['decoder_steps']}, upsamplers {steps['upsampler_steps']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
