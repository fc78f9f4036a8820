"""What the measuring parts share: driving an operation stage by stage on copies of its
tracks, differences against a reference, alternated timings, images/s."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import replace
from typing import Any, Callable, Iterator, Optional

from .plan import Plan


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def clone_tracks(tracks: list[Any]) -> list[Any]:
    """Fresh copies of tracks (latent, pairs, conditioning dict, generator state)."""
    import torch

    def gen(g: Optional[torch.Generator]) -> Optional[torch.Generator]:
        if g is None:
            return None
        copy = torch.Generator(device=g.device)
        copy.set_state(g.get_state())
        return copy

    return [replace(tr, x=tr.x.clone(), pairs=list(tr.pairs), cond=dict(tr.cond), generator=gen(tr.generator))
            for tr in tracks]


def staged_run(pipe: Any, op: Any) -> tuple[dict[str, list], dict[str, Any], Any]:
    """Drive an operation: per stage, copies of the tracks it was handed and its output
    [n, ...] (fp32, CPU); and the operation's result."""
    import torch

    from pipelines.sampling import run_to_end

    inputs, outputs = {}, {}
    request = next(op)
    while True:
        inputs[request.stage] = clone_tracks(request.tracks)
        run_to_end(pipe.stages[request.stage], request.tracks)
        outputs[request.stage] = torch.cat([tr.x for tr in request.tracks]).float().cpu()
        try:
            request = op.send(None)
        except StopIteration as stop:
            return inputs, outputs, stop.value


def run_stage(pipe: Any, key: str, tracks: list[Any]) -> Any:
    """One stage of `pipe` on copies of the tracks: its output [n, ...] (fp32, CPU)."""
    import torch

    from pipelines.sampling import run_to_end

    tracks = run_to_end(pipe.stages[key], clone_tracks(tracks))
    return torch.cat([tr.x for tr in tracks]).float().cpu()


def difference(a: Any, ref: Any) -> dict[str, float]:
    """max, 99th percentile and mean of |a - ref| (finite values), the reference's max
    |value|, and a's non-finite values."""
    d = (a - ref).abs().flatten()
    finite = d[d.isfinite()][: 2**24]  # torch.quantile's limit
    if not finite.numel():
        return {"max_abs": float("nan"), "nonfinite": int((~a.isfinite()).sum())}
    return {"max_abs": float(finite.max()), "p99_abs": float(finite.quantile(0.99)),
            "mean_abs": float(finite.mean()), "ref_max_abs": float(ref.abs().max()),
            "nonfinite": int((~a.isfinite()).sum())}


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """float32 matmuls and convolutions without TF32 (cuDNN allows it by default)."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def alternate(calls: dict[str, Callable[[int], Any]], repeats: int, deadline: float, device: str) -> dict:
    """A warm-up of each call, then `repeats` timed rounds (order flipped each round) while
    time is left. Returns {name: [seconds, ...]}."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call(0)
        sync(device)
    for r in range(repeats):
        if r and time.monotonic() > deadline - 2 * sum(t[-1] for t in times.values()):
            break
        for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            t0 = time.perf_counter()
            calls[name](r + 1)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def per_second(images: int, seconds: list[float]) -> dict[str, Any]:
    med = statistics.median(seconds)
    return {"seconds": [round(s, 4) for s in seconds], "median_s": med, "images_per_s": images / med}


def fast_dtype(plan: Plan) -> Any:
    """The serving dtype of the speed comparisons: float16 on CUDA, float32 on the CPU."""
    import torch

    return torch.float16 if plan.device == "cuda" else torch.float32


def versus(ours: Callable[[int, int], dict], theirs: Callable[[int, int], Any], batches: tuple[int, ...],
           plan: Plan, deadline: float) -> dict[str, Any]:
    """images/s of ours(batch, seed) -> {stage: seconds} and theirs(batch, seed) at each batch
    size, alternated after a warm-up each: {"batch_B": ...}."""
    out: dict[str, Any] = {}
    stages: dict[int, dict] = {}
    for batch in batches:
        calls = {"ours": lambda s, b=batch: stages.__setitem__(b, ours(b, s)),
                 "diffusers": lambda s, b=batch: theirs(b, s)}
        times = alternate(calls, plan.repeats, deadline, plan.device)
        res = {n: per_second(batch, t) for n, t in times.items()}
        res["ours_over_diffusers"] = res["ours"]["images_per_s"] / res["diffusers"]["images_per_s"]
        res["ours_last_run_stage_s"] = stages[batch]
        out[f"batch_{batch}"] = res
    return out


def against_float32(make: Callable[[Any], Any], op: Callable[[Any], Any],
                    keep: Optional[str] = None) -> tuple[dict[str, Any], Any]:
    """float16 and bfloat16 against float32 (TF32 off): make(dtype) -> a pipeline, op(pipe)
    -> the operation of a generation. Per dtype, each stage alone on the float32 run's input
    tracks, and the whole operation (final images). Returns the comparisons and the pipeline
    of the dtype named `keep` (float32 included; None if none or it failed); the others are
    dropped as soon as measured (one pipeline besides the kept one at a time)."""
    import torch

    with exact_float32():  # the construction too (e.g. Kandinsky encodes "" and the empty image)
        ref = make(torch.float32)
        inputs, outputs, result = staged_run(ref, op(ref))
    final = result.images.float().cpu()
    kept, pipe = (ref if keep == "float32" else None), None
    del ref
    gc.collect()
    out: dict[str, Any] = {"reference": "float32 without TF32"}
    for name in ("float16", "bfloat16"):
        try:
            pipe = make(getattr(torch, name))
            stages = {key: difference(run_stage(pipe, key, tracks), outputs[key]) for key, tracks in inputs.items()}
            whole = staged_run(pipe, op(pipe))[2].images.float().cpu()
            out[name] = {"stages": stages, "end_to_end": difference(whole, final)}
            kept = pipe if name == keep else kept
        except Exception as err:  # noqa: BLE001 - e.g. a dtype this device cannot run
            out[name] = {"error": f"{type(err).__name__}: {err}"}
        pipe = None
        gc.collect()
    return out, kept


def generation(pipe: Any, steps: tuple[int, ...], batch: int, seed: int = 0) -> Any:
    """The operation of one generation of `batch` images at steps (prior, decoder[,
    upsampler]), best_of 1, at the pipeline's default size."""
    from bench.pipeline import PROMPT
    from pipelines.operations import generate
    from pipelines.unclip import Sampling

    opts = Sampling(best_of=1, **dict(zip(("prior_steps", "decoder_steps", "upsampler_steps"), steps)))
    return generate(pipe, PROMPT, n=batch, seed=seed, opts=opts)
