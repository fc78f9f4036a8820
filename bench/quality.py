"""What each quality preset (server/quality.py) costs and gives on a model: seconds per
generation at the largest size, measured alternately in one run so that the ratios hold
on a noisy machine, and the grain of flat backgrounds (median per-channel standard
deviation of the top and bottom bands, 0 for a render of the shapes world). Attribute
accuracy per preset comes from `python -m bench.eval_shapes --quality Q`.

    .venv/bin/python -m bench.quality [--model-dir weights/default] [--repeats 3] [--grain-per-prompt 2]
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
from server.quality import STEP_SCALE

PROMPT = "a small red circle at the top left on a blue background"
GRAIN_PROMPTS = ("a small red circle at the top left on a blue background",
                 "a large green square in the center on a white background",
                 "a small yellow triangle at the bottom right on a purple background",
                 "a large blue circle on the left on an orange background")


def seconds(pipe: UnCLIP, preset: str, seed: int) -> float:
    """One generation at the largest size with the preset's steps."""
    started = time.perf_counter()
    run_direct(pipe, generate(pipe, PROMPT, seed=seed, opts=Sampling(step_scale=STEP_SCALE[preset])))
    return time.perf_counter() - started


def grain(pipe: UnCLIP, preset: str, per_prompt: int = 2) -> float:
    """Median background noise (0-255 scale) over `per_prompt` images of each grain prompt."""
    opts = Sampling(step_scale=STEP_SCALE[preset])
    ops = [generate(pipe, p, n=per_prompt, seed=10 + i, opts=opts) for i, p in enumerate(GRAIN_PROMPTS)]
    sigmas = []
    for result in run_many(pipe, ops, max_batch=8):
        x = (result.images.clamp(-1, 1) + 1) * 127.5
        bands = torch.cat([x[..., :16, :].flatten(2), x[..., -16:, :].flatten(2)], dim=2)  # [n, 3, pixels]
        sigmas += bands.std(dim=2).median(dim=1).values.tolist()
    return statistics.median(sigmas)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path("weights/default"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--grain-per-prompt", type=int, default=2, help="images of each of the 4 grain prompts")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    pipe = UnCLIP(load_model_dir(args.model_dir).use_channels_last())  # as the server runs it
    seconds(pipe, "medium", 0)  # warm-up
    times: dict[str, list[float]] = {preset: [] for preset in STEP_SCALE}
    for r in range(args.repeats):
        for preset in STEP_SCALE:
            times[preset].append(seconds(pipe, preset, r))
    medium = statistics.median(times["medium"])
    for preset, ts in times.items():
        steps = pipe.settings_of(Sampling(step_scale=STEP_SCALE[preset]))
        print(f"{preset:<7} {statistics.median(ts):6.2f} s ({statistics.median(ts) / medium:.2f}x medium)  "
              f"background noise {grain(pipe, preset, args.grain_per_prompt):5.2f}  prior {steps['prior_steps']}, "
              f"decoder {steps['decoder_steps']}, upsamplers {steps['upsampler_steps']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
