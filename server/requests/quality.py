"""OpenAI's `quality` as a step preset: one pure policy function.

A preset scales the default number of steps (the model's, from stack.json) of some stages:
`low` halves the prior's, `medium` keeps every default, `high` doubles the prior's and the
upsamplers'; steps a request gives itself win. Measured on the default model (docs/benchmarks.md,
"Quality presets"): attribute accuracy is the same within noise for all three (all five
0.92 / 0.875 / 0.86 at N = 64, standard error 0.04); `low` costs 0.92x `medium`'s time,
`high` 1.90x (with the upsampler defaults of stack.json: grain of flat backgrounds 1.89 /
1.90 / 1.92; with the earlier ones, `high`'s extra upsampler steps took it from 9.4 to
6.8). The decoder keeps its default in every preset: its 4 DDIM steps are the measured
best (bench/sweep_sampling.py: 3 and 5 steps score lower). `low` keeps the upsamplers'
too: halving them (to 4 and 2 steps) broke colours (colour accuracy 0.48, variations 0.62;
halving every stage: 0.47), so a cheap preset can only save prior steps here. `auto` is
`medium`: the model's defaults were chosen by measurement as its best trade-off. The
retired DALL-E values map too (`standard` -> medium, `hd` -> high), and the response
echoes the preset used. Values of other models (`xhigh`, `max`) are refused by the request
models: this model has no preset beyond `high`.

Why scale the defaults rather than fix step counts: a preset then means the same for any
model directory (Karlo's 25/25/7 or the shapes model's 25/4/8/1), and per-stage defaults
that were tuned by measurement keep their proportions. What each preset costs and gives
on the default model is in docs/benchmarks.md (`python -m bench.eval_shapes --quality Q`).
"""

from __future__ import annotations

from typing import Literal, Optional

from pipelines.stage_keys import PRIOR, UPSAMPLER

Preset = Literal["low", "medium", "high"]
STEP_SCALE: dict[Preset, dict[str, float]] = {
    "low": {PRIOR: 0.5},
    "medium": {},
    "high": {PRIOR: 2.0, UPSAMPLER: 2.0},
}
ALIASES: dict[str, Preset] = {"auto": "medium", "standard": "medium", "hd": "high"}


def preset(quality: Optional[str]) -> Preset:
    """The preset of a request's `quality` (None: auto)."""
    if quality is None:
        return "medium"
    return ALIASES.get(quality, quality)  # type: ignore[return-value]
