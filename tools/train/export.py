"""Assemble a run's trained stages into a model directory in our layout (fp16 by default).

Every network gets its stage's EMA weights (CLIP's token embedding stored pruned to the rows
of the shapes world's tokens, `tools.convert.shapes_token_ids`, unless asked for in full);
clip_mean / clip_std are the run's statistics of CLIP image embeddings of rendered scenes
(the ones the prior was trained against). The sampling defaults come from the run's
StackConfig and may be overridden, e.g.
`--set decoder.diffusion.guidance=2.5 prior.best_of=4`, without retraining.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from pipelines.checkpoints import CONFIG_FILE, save_model_dir
from pipelines.config import StackConfig
from pipelines.stack import UnCLIPStack
from pipelines.stage_keys import upsampler_index
from tools.convert import DTYPES, shapes_token_ids

from .checkpoint import load_trained
from .frozen_clip import ensure_stats
from .loop import seed_modules
from .run import Run, TrainError
from .stages import parameters

SAMPLING_FIELDS = ("steps", "guidance", "sampler", "clip_x0", "spacing_power", "last_step_t", "start_t",
                   "best_of")


def module_of(stage: str) -> str:
    """Stage name -> submodule of UnCLIPStack ("upsampler_1" -> "upsamplers.1")."""
    index = upsampler_index(stage)
    if index is not None:
        return f"upsamplers.{index}"
    return "clip.model" if stage == "clip" else stage


def load_stages(stack: UnCLIPStack, run: Run, allow_partial: bool) -> dict[str, dict[str, Any]]:
    """Load each stage's EMA weights into the stack; returns {stage: checkpoint facts}.
    A stage without a checkpoint is an error unless allow_partial (it stays random)."""
    facts = {}
    for stage in run.stages():
        try:
            facts[stage] = load_trained(stack.get_submodule(module_of(stage)), run.stage_dir(stage))
        except FileNotFoundError:
            if not allow_partial:
                raise
            facts[stage] = {"step": 0, "meta": {}, "elapsed_s": 0.0}
    return facts


def check_same_clip(facts: dict[str, dict[str, Any]], allow_partial: bool) -> None:
    """The prior and decoder must have been trained on the CLIP being exported."""
    clip_step = facts["clip"]["step"]
    for stage in ("prior", "decoder"):
        used = facts[stage].get("meta", {}).get("clip_step", clip_step)
        if used != clip_step and not allow_partial:
            raise TrainError(f"{stage} was trained on CLIP step {used}, but CLIP is at step {clip_step}")


def with_overrides(cfg: StackConfig, items: Sequence[str]) -> StackConfig:
    """Apply `path=value` overrides of sampling defaults, e.g. decoder.diffusion.guidance=2.5,
    upsamplers.0.diffusion.steps=6, prior.best_of=4 (values parsed as JSON, else strings)."""
    for item in items:
        path, _, raw = item.partition("=")
        keys = path.split(".")
        if not raw or keys[-1] not in SAMPLING_FIELDS:
            raise TrainError(f"override {item!r}: only sampling defaults {SAMPLING_FIELDS} can be set, as path=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        cfg = _replace_path(cfg, keys, value)
    return cfg


def _replace_path(obj: Any, keys: list[str], value: Any) -> Any:
    """A copy of nested frozen dataclasses / tuples with obj.<keys> = value."""
    head, rest = keys[0], keys[1:]
    if isinstance(obj, tuple):
        if not head.isdigit() or int(head) >= len(obj):
            raise TrainError(f"no item {head!r} among {len(obj)}")
        i = int(head)
        return obj[:i] + (_replace_path(obj[i], rest, value) if rest else value,) + obj[i + 1:]
    if not hasattr(obj, head):
        raise TrainError(f"no field {head!r} in {type(obj).__name__}")
    return dataclasses.replace(obj, **{head: _replace_path(getattr(obj, head), rest, value) if rest else value})


def assemble(run: Run, allow_partial: bool = False, overrides: Sequence[str] = ()) -> tuple[UnCLIPStack, dict]:
    """The run's stack with trained weights and statistics, and the stages' checkpoint facts."""
    seed_modules(run.config.seed, "export")
    stack = UnCLIPStack(run.config.stack)
    facts = load_stages(stack, run, allow_partial)
    check_same_clip(facts, allow_partial)
    mean, std = ensure_stats(run, stack.clip.eval(), int(facts["clip"]["step"]))
    stack.clip_mean.copy_(mean)
    stack.clip_std.copy_(std)
    stack.cfg = with_overrides(run.config.stack, overrides)
    return stack.eval().requires_grad_(False), facts


def model_card(run: Run, stack: UnCLIPStack, facts: dict, dtype: str) -> str:
    """MODEL_CARD.md of an exported model: what was trained, how far, how to evaluate."""
    cfg, rows = run.config, []
    for stage, f in facts.items():
        params = parameters(stack.get_submodule(module_of(stage))) / 1e6
        rows.append(f"| {stage} | {params:.2f} M | {f['step']} / {cfg.stage(stage).steps} "
                    f"| {f.get('elapsed_s', 0) / 3600:.2f} |")
    d, p = stack.cfg.decoder.diffusion, stack.cfg.prior
    return "\n".join([
        f"# {stack.cfg.name}: unCLIP trained on the shapes world",
        "",
        f"Trained from scratch with `python -m tools.train all --run {run.path}` (preset `{cfg.name}`, "
        f"seed {cfg.seed}); exported {time.strftime('%Y-%m-%d')} in {dtype}. See weights/README.md.",
        "",
        "Data: scenes of `docs/shapes-world.md` rendered on the fly by `tools.shapes` (jittered centre, "
        "radius and colour, anti-aliased), each with its canonical caption or a random partial caption; nothing "
        "downloaded. Each stage trained on the finished CLIP before it; batch sizes and learning rates are in the "
        "run's train.json (`tools/train/config.py`).",
        "",
        "| stage | parameters | steps (done / planned) | training hours |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        f"Sizes {list(stack.cfg.sizes)} px. Sampling defaults: prior {p.diffusion.steps} steps, guidance "
        f"{p.diffusion.guidance}, best of {p.best_of}; decoder {d.sampler} {d.steps} steps "
        f"({d.prediction}-prediction), "
        f"guidance {d.guidance}; upsamplers {[u.diffusion.steps for u in stack.cfg.upsamplers]} steps.",
        "",
        "Evaluate: `python -m bench.eval_shapes --model-dir <this directory>`.",
        "",
    ])


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished model directory into place, replacing an older model directory."""
    if out.exists():
        if any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
            raise TrainError(f"{out} exists and is not a model directory; not replacing it")
        shutil.rmtree(out)
    tmp.rename(out)


def export(run: Run, out: Path, dtype: str = "fp16", allow_partial: bool = False,
           overrides: Sequence[str] = (), prune_tokens: bool = True) -> Path:
    """Write the run's model directory to `out` (built beside it, then moved into place).
    prune_tokens: store only the rows of CLIP's token embedding that shapes-world captions
    use, and one fallback row for every other token (a CLIP trained on those captions alone
    never changes the other rows: no gradient reaches them, and embeddings get no weight
    decay)."""
    stack, facts = assemble(run, allow_partial, overrides)
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(stack, tmp, DTYPES[dtype], shapes_token_ids() if prune_tokens else None)
    (tmp / "MODEL_CARD.md").write_text(model_card(run, stack, facts, dtype))
    replace_dir(tmp, out)
    return out


def dir_size(path: Path) -> int:
    """Bytes of the files under a directory (its subdirectories included)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
