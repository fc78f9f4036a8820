"""The kandinsky part: Kandinsky 2.2's real architecture with random weights, precision
per stage and ours against diffusers' two pipelines around the same modules."""

from __future__ import annotations

import time
from typing import Any

from .measuring import against_float32, fast_dtype, generation, sync, versus
from .plan import Plan
from .runner import skipped


def kandinsky_nets(plan: Plan, dtype: Any) -> Any:
    """Kandinsky's networks with seeded random weights, built on the plan's device: the real
    architecture (4.9 B parameters), or the tests' tiny one for the tiny preset."""
    from tests.pipelines._kandinsky_real import real_nets, tiny_nets

    return (tiny_nets if plan.preset == "tiny" else real_nets)(plan.device, dtype)


def kandinsky(plan: Plan, deadline: float) -> dict[str, Any]:
    """Kandinsky 2.2 at its native size: float16 and bfloat16 against float32 per stage and
    end to end (batch 1), then images/s of ours against diffusers' two pipelines built around
    the same modules (bench/kandinsky_pipeline.py's run_ours / run_theirs), alternated."""
    try:
        import diffusers
        import transformers  # noqa: F401 - the text and vision towers
    except Exception as err:  # noqa: BLE001
        return skipped(f"not measured: diffusers or transformers not importable: {type(err).__name__}: {err}")
    import torch

    from bench.kandinsky_pipeline import run_ours, run_theirs
    from pipelines.kandinsky.pipeline import Kandinsky
    from tests.pipelines._kandinsky_real import diffusers_pipelines, params_millions

    build_s: dict[str, float] = {}

    def make(dtype: Any) -> Any:
        t0 = time.monotonic()
        pipe = Kandinsky(kandinsky_nets(plan, dtype)).use_channels_last().use_attention_backend()  # as served
        sync(plan.device)
        build_s[str(dtype).removeprefix("torch.")] = round(time.monotonic() - t0, 1)
        return pipe

    fast = fast_dtype(plan)
    steps = plan.kandinsky_steps
    compared, pipe = against_float32(make, lambda p: generation(p, steps, 1), keep=str(fast).removeprefix("torch."))
    pipe = pipe or make(fast)
    out: dict[str, Any] = {
        "architecture": "tiny (tests)" if plan.preset == "tiny" else "Kandinsky 2.2 (real configs, random weights)",
        "params_millions": params_millions(pipe.nets), "size": pipe.size_rule.default, "steps": steps,
        "precision": {"batch": 1, **compared}, "diffusers": diffusers.__version__,
        "dtype": str(fast).removeprefix("torch."), "channels_last": True}
    ref = diffusers_pipelines(pipe.nets)
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out |= versus(lambda b, s: run_ours(pipe, b, steps, s), lambda b, s: run_theirs(ref, pipe, b, steps, s),
                  plan.kandinsky_batches, plan, deadline)
    if plan.device == "cuda":
        out["speed_peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
    out["build_s"] = build_s
    return out
