"""The parts on Karlo-size random weights (`tools.convert random`): weights, precision,
attention (xformers against SDPA) and ours against diffusers' UnCLIPPipeline."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .measuring import (
    against_float32,
    alternate,
    difference,
    fast_dtype,
    generation,
    per_second,
    run_stage,
    staged_run,
    versus,
)
from .plan import Plan
from .runner import Bench, skipped

log = logging.getLogger(__name__)


def load_pipe(model: Path, device: str, dtype: Any) -> Any:
    """The model directory loaded as the server loads it (channels-last UNets)."""
    from pipelines.checkpoints import load_model_dir
    from pipelines.unclip import UnCLIP

    return UnCLIP(load_model_dir(model, device, dtype).use_channels_last())


def make_weights(plan: Plan, dest: Path, deadline: float) -> dict[str, Any]:
    """`tools.convert random --preset P --dtype fp16` with its initializers on the device."""
    import torch

    from pipelines.checkpoints import build_on_meta
    from pipelines.config import StackConfig
    from tools.convert import main as convert

    t0 = time.monotonic()
    with torch.device(plan.device):
        status = convert(["random", "--preset", plan.preset, "--seed", "0", "--dtype", "fp16", "--out", str(dest)])
    if status:
        raise RuntimeError(f"tools.convert exited with {status}")
    stack = build_on_meta(getattr(StackConfig, plan.preset)())
    params = {n: round(sum(p.numel() for p in getattr(stack, n).parameters()) / 1e6, 1)
              for n in ("clip", "prior", "decoder", "upsamplers")}
    return {"preset": plan.preset, "stored_dtype": "float16", "initialized_on": plan.device,
            "convert_s": round(time.monotonic() - t0, 1), "params_millions": params,
            "bytes": sum(p.stat().st_size for p in dest.iterdir())}


def precision(plan: Plan, model: Path, deadline: float) -> dict[str, Any]:
    """float16 and bfloat16 against float32 (TF32 off) at batch 1: each stage alone on the
    float32 run's input tracks, and one whole generation (final images)."""
    compared, _ = against_float32(lambda dtype: load_pipe(model, plan.device, dtype),
                                  lambda pipe: generation(pipe, plan.steps, 1))
    return {"batch": 1, "steps": plan.steps, **compared}


def xformers_problem() -> Optional[str]:
    """None when pipelines.attention's xformers path runs here (float16, CUDA, with a bias,
    as the decoder calls it); else why not. xformers imports even when its C++/CUDA
    extensions were built for another torch, and then fails only when called."""
    try:
        import torch

        from pipelines import attention as attn

        if attn._xops is None:
            import xformers.ops  # noqa: F401 - raises the import's own error
            return "pipelines.attention found no xformers"
        q = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
        k = torch.randn(2, 4, 81, 64, device="cuda", dtype=torch.float16)
        bias = torch.zeros(2, 1, 1, 81, device="cuda").masked_fill(torch.arange(81, device="cuda") > 70, -float("inf"))
        attn._xformers_attention(q, k, k, bias)
        torch.cuda.synchronize()
        return None
    except Exception as err:  # noqa: BLE001 - any failure means "not usable here"
        return f"{type(err).__name__}: {str(err).strip()[:500]}"


def keep_xformers_only_if_it_runs(bench: Bench) -> None:
    """If xformers is installed but cannot run here, this process uses SDPA and the venv
    loses xformers (so that the server, a new process, does not pick it either)."""
    import importlib.util

    if not bench.cuda or importlib.util.find_spec("xformers") is None:
        return
    problem = xformers_problem()
    bench.results.setdefault("meta", {})["xformers_problem"] = problem
    if problem is None:
        return
    from pipelines.attention import set_backend

    log.warning("xformers cannot run here (%s): SDPA for every part", problem)
    set_backend("sdpa")
    spec = importlib.util.find_spec("xformers")
    if spec.origin and sys.prefix != sys.base_prefix and Path(spec.origin).is_relative_to(sys.prefix):
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "xformers"], capture_output=True)


def attention(plan: Plan, model: Path, deadline: float, problem: Optional[str]) -> dict[str, Any]:
    """xformers against SDPA in float16: images/s of a generation at the largest batch
    (alternated) and the max |diff| of the decoder stage's output on the same tracks."""
    if problem is not None:
        return skipped(f"not measured: xformers cannot run here: {problem}")
    import torch
    import xformers

    from pipelines import attention as attn
    from pipelines.stage_keys import DECODER

    pipe, batch = load_pipe(model, plan.device, torch.float16), max(plan.batches)
    out: dict[str, Any] = {"xformers": xformers.__version__, "dtype": "float16", "batch": batch}
    try:
        attn.set_backend("sdpa")
        inputs = staged_run(pipe, generation(pipe, plan.steps, batch))[0]
        decoded = {}
        for name in ("sdpa", "xformers"):
            attn.set_backend(name)
            decoded[name] = run_stage(pipe, DECODER, inputs[DECODER])
        out["decoder_max_abs_diff"] = difference(decoded["xformers"], decoded["sdpa"])

        def call(name: str) -> Callable[[int], Any]:
            def run(seed: int) -> None:
                attn.set_backend(name)
                staged_run(pipe, generation(pipe, plan.steps, batch, seed))
            return run

        times = alternate({n: call(n) for n in ("sdpa", "xformers")}, plan.repeats, deadline, plan.device)
        out.update({n: per_second(batch, t) for n, t in times.items()})
        out["xformers_over_sdpa"] = out["xformers"]["images_per_s"] / out["sdpa"]["images_per_s"]
    finally:
        attn.set_backend(None)
    return out


def build_reference(stack: Any, device: str, dtype: Any) -> tuple[Any, str]:
    """diffusers' UnCLIPPipeline over our stack's weights, built on the device (its
    initializers run there); on failure built on the CPU and moved."""
    import torch

    from tests.pipelines._diffusers_ref import build_pipeline

    try:
        with torch.device(device):
            ref, where = build_pipeline(stack), f"built on {device}"
    except Exception as err:  # noqa: BLE001 - fall back to the tested CPU path
        log.warning("building diffusers on %s failed (%s); building on the CPU", device, err)
        ref, where = build_pipeline(stack), f"built on cpu ({type(err).__name__} on {device})"
    return ref.to(device, dtype), where


def ours_vs_diffusers(plan: Plan, model: Path, deadline: float) -> dict[str, Any]:
    """images/s of ours and of diffusers at each batch size, same weights, steps and guidance
    (bench/pipeline.py's run_ours / run_theirs), alternated after a warm-up each."""
    try:
        import diffusers
    except Exception as err:  # noqa: BLE001
        return skipped(f"not measured: diffusers not importable: {type(err).__name__}: {err}")
    import torch

    from bench.pipeline import run_ours, run_theirs
    from pipelines.attention import backend_for

    dtype = fast_dtype(plan)
    pipe = load_pipe(model, plan.device, dtype)
    ref, where = build_reference(pipe.stack, plan.device, dtype)
    out: dict[str, Any] = {"diffusers": diffusers.__version__, "dtype": str(dtype).removeprefix("torch."),
                           "our_attention": backend_for(torch.device(plan.device)), "reference": where}
    return out | versus(lambda b, s: run_ours(pipe, b, plan.steps, s),
                        lambda b, s: run_theirs(ref, pipe, b, plan.steps, s), plan.batches, plan, deadline)
