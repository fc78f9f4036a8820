"""The GPU settings, measured on one step of Kandinsky's decoder UNet: achieved TFLOP/s
against the matmul peak, CUDA graphs, and torch.compile."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable

from .measuring import difference, fast_dtype, sync
from .plan import Plan
from .runner import skipped, timed_out

COMPILE_MODE = "default"  # torch.compile's: Inductor without CUDA graphs (cuda_graphs measures those)


def decoder_unet(plan: Plan) -> Any:
    """Kandinsky's decoder UNet alone (real; tiny for the tiny preset), seeded random weights
    built on the device, in the serving dtype, channels-last (as the server runs it)."""
    import torch

    from tests.pipelines._kandinsky_real import real_unet, tiny_decoder_unet

    build = tiny_decoder_unet if plan.preset == "tiny" else real_unet
    return build(plan.device, fast_dtype(plan)).to(memory_format=torch.channels_last)


def decoder_step(unet: Any, batch: int) -> Callable[..., Any]:
    """One step of the decoder UNet on fixed inputs of `batch` rows (latents at its sample
    size, image embeddings, one timestep), called as LatentDecoderStage calls it; step(net)
    runs net instead (a compiled UNet); return_dict=False, as diffusers' pipelines call it
    (a tuple, simpler to trace than its output class). The inputs stay put (CUDA graphs read
    them in place)."""
    import torch

    cfg, device, dtype = unet.config, unet.device, unet.dtype
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    x = x.to(device, dtype).contiguous(memory_format=torch.channels_last)
    emb = torch.randn(batch, cfg.encoder_hid_dim, generator=gen).to(device, dtype)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)

    @torch.no_grad()
    def step(net: Any = unet) -> Any:
        return net(x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb}, return_dict=False)[0]

    return step


def step_rate(step: Callable[[], Any], device: str, steps: int, rounds: int = 3) -> dict[str, Any]:
    """A warm-up call, then `rounds` rounds of `steps` calls back to back (synchronized at
    each round's end): seconds per step of each round, their median, steps/s."""
    step()
    sync(device)
    per_step = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        per_step.append((time.perf_counter() - t0) / steps)
    med = statistics.median(per_step)
    return {"step_s": [round(s, 5) for s in per_step], "median_step_s": med, "steps_per_s": 1 / med}


def matmul_peak(device: str, dtype: Any, side: int, seconds: float = 0.5) -> dict[str, Any]:
    """TFLOP/s of a side^3 matmul in dtype (2 side^3 FLOPs each), back to back for about
    `seconds` after a warm-up."""
    import torch

    a, b = (torch.randn(side, side, device=device, dtype=dtype) for _ in range(2))
    c = torch.empty_like(a)
    torch.mm(a, b, out=c)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(3):
        torch.mm(a, b, out=c)
    sync(device)
    n = max(3, min(500, int(seconds / max((time.perf_counter() - t0) / 3, 1e-6))))
    t0 = time.perf_counter()
    for _ in range(n):
        torch.mm(a, b, out=c)
    sync(device)
    dt = time.perf_counter() - t0
    return {"side": side, "matmuls": n, "seconds_each": dt / n, "tflop_s": 2 * side**3 * n / dt / 1e12}


def flops(plan: Plan, deadline: float) -> dict[str, Any]:
    """The decoder step's achieved TFLOP/s at each of plan.step_batches (FLOPs counted by
    torch.utils.flop_counter on one step: matmuls, convolutions, attention), against the
    measured bf16 and fp16 matmul peaks."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    peaks = {name: matmul_peak(plan.device, getattr(torch, name), plan.matmul_side) for name in ("bfloat16", "float16")}
    unet = decoder_unet(plan)
    out: dict[str, Any] = {"dtype": str(unet.dtype).removeprefix("torch."), "matmul_peak": peaks}
    for batch in plan.step_batches:
        step = decoder_step(unet, batch)
        with FlopCounterMode(display=False) as counter:
            step()
        count = counter.get_total_flops()
        rate = step_rate(step, plan.device, plan.timed_steps)
        achieved = count / rate["median_step_s"] / 1e12
        out[f"batch_{batch}"] = {"flops_per_step": count, **rate, "tflop_s": achieved,
                                 "of_bf16_peak": achieved / peaks["bfloat16"]["tflop_s"],
                                 "of_fp16_peak": achieved / peaks["float16"]["tflop_s"]}
    return out


def cuda_graphs(plan: Plan, deadline: float) -> dict[str, Any]:
    """The decoder step at plan.step_batches[0] rows captured once in a CUDA graph
    (torch.cuda.graph, after warm-up calls on a side stream) and replayed, against eager."""
    import torch

    unet = decoder_unet(plan)
    batch = plan.step_batches[0]
    step = decoder_step(unet, batch)
    eager = step_rate(step, plan.device, plan.timed_steps)
    expected = step().float().cpu()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # cuBLAS/cuDNN workspaces and the allocator, outside the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    t0 = time.perf_counter()
    with torch.cuda.graph(graph):
        static_out = step()
    sync(plan.device)
    capture_s = time.perf_counter() - t0
    graph.replay()
    sync(plan.device)
    replayed = static_out.float().cpu()
    graphed = step_rate(graph.replay, plan.device, plan.timed_steps)
    return {"batch": batch, "dtype": str(unet.dtype).removeprefix("torch."), "capture_s": round(capture_s, 3),
            "eager": eager, "graph": graphed, "graph_over_eager": graphed["steps_per_s"] / eager["steps_per_s"],
            "max_abs_diff": difference(replayed, expected)}


def compile_unet(plan: Plan, deadline: float) -> dict[str, Any]:
    """torch.compile(unet, mode=COMPILE_MODE) at plan.step_batches[0] rows: seconds of the
    first call (tracing and Inductor's code generation), steps/s of eager and compiled, graph
    breaks, max |diff| of the outputs; a compilation still running at the part's budget is
    recorded as such, with the eager figures. The compiled UNet is dropped (torch._dynamo.reset)."""
    import torch

    unet = decoder_unet(plan)
    batch = plan.step_batches[0]
    step = decoder_step(unet, batch)
    eager = step_rate(step, plan.device, plan.timed_steps)
    expected = step().float().cpu()
    out: dict[str, Any] = {"mode": COMPILE_MODE, "batch": batch, "dtype": str(unet.dtype).removeprefix("torch."),
                           "eager": eager}
    try:
        compiled = torch.compile(unet, mode=COMPILE_MODE)
        t0 = time.perf_counter()
        try:
            got = step(compiled)
            sync(plan.device)
        except BaseException as err:  # noqa: BLE001 - the budget's timer, maybe wrapped by dynamo
            if not timed_out(err):
                raise
            return out | {"compiled": skipped(f"still compiling after {time.perf_counter() - t0:.0f} s "
                                              "(the part's budget)")}
        compile_s = time.perf_counter() - t0
        fast = step_rate(lambda: step(compiled), plan.device, plan.timed_steps)
        out |= {"compile_s": round(compile_s, 1), "compiled": fast,
                "compiled_over_eager": fast["steps_per_s"] / eager["steps_per_s"],
                "max_abs_diff": difference(got.float().cpu(), expected)}
        with contextlib.suppress(Exception):  # a private counter: report it where it exists
            from torch._dynamo.utils import counters

            out["graph_breaks"] = sum(counters["graph_break"].values())
        return out
    finally:
        torch._dynamo.reset()
