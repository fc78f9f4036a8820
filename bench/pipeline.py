"""Images/s of our stack vs diffusers' UnCLIPPipeline: same random weights, same steps,
guidance on, on the CPU, measured alternately in one run; ours as the server runs it
(weights saved and loaded back in the server's dtype, `default_dtype`: bf16 on a CPU with
native bf16, else fp32; channels-last UNets), diffusers as its users do (its defaults: fp32);
plus where each one's time goes (per-stage wall time, time inside the networks, optionally a
torch.profiler table). `--dtype float32` compares at equal precision. `--family kandinsky`:
the same for Kandinsky 2.2 (bench/kandinsky_pipeline.py: ours against diffusers'
KandinskyV22PriorPipeline + KandinskyV22Pipeline over one save_pretrained folder).

    .venv/bin/python -m bench.pipeline [--family karlo|kandinsky] [--config tiny|small]
        [--steps 25,25,7] [--batch 1,4] [--repeats 3] [--dtype auto]

Writes bench/results/pipeline-<family>-<config>-<time>.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from bench import write_result
from pipelines.checkpoints import dtype_named, load_model_dir, save_model_dir
from pipelines.config import StackConfig
from pipelines.operations import generate
from pipelines.sampling import run_to_end
from pipelines.stack import UnCLIPStack
from pipelines.unclip import Sampling, UnCLIP
from tests.pipelines._diffusers_ref import build_pipeline, parity_config, random_parity_stack

PROMPT = "a red square above a blue circle"


def small_config() -> StackConfig:
    """Bigger than tiny, still CPU-friendly: 64 px decoder (64 ch), 64->128 upsampler,
    prior width 256 x 4 layers; head dim 32."""
    cfg = parity_config()
    prior = replace(cfg.prior, model=replace(cfg.prior.model, width=256, layers=4, heads=8))
    dec = replace(cfg.decoder.model, image_size=64, model_channels=64, channel_mult=(1, 2, 3), num_res_blocks=2,
                  attention_resolutions=(32, 16), num_head_channels=32, norm_groups=16, xf_width=256)
    up = replace(cfg.upsamplers[0].model, image_size=128, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1)
    return replace(cfg, prior=prior, decoder=replace(cfg.decoder, model=dec),
                   upsamplers=(replace(cfg.upsamplers[0], model=up),))


CONFIGS: dict[str, Callable[[], StackConfig]] = {"tiny": parity_config, "small": small_config}
THEIRS = "its defaults (fp32)"  # diffusers as its users run it, from its own folder


class ModelTimer:
    """Accumulates wall time spent inside given modules' forward (forward hooks)."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.seconds: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        for name, mod in modules.items():
            mod.register_forward_pre_hook(lambda *_, n=name: self._start.__setitem__(n, time.perf_counter()))
            mod.register_forward_hook(lambda *_, n=name: self._stop(n))

    def _stop(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._start.pop(name)

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


def our_modules(pipe: UnCLIP) -> dict[str, nn.Module]:
    up = pipe.stack.upsamplers[0]
    return {"prior": pipe.stack.prior, "decoder": pipe.stack.decoder, "sr_first": up.model,
            "sr_last": up.last_step_model}


def their_modules(ref: Any) -> dict[str, nn.Module]:
    return {"prior": ref.prior, "decoder": ref.decoder, "text_proj": ref.text_proj,
            "sr_first": ref.super_res_first, "sr_last": ref.super_res_last}


def served_stack(stack: UnCLIPStack, dtype: str) -> UnCLIPStack:
    """The stack as the server gets it: saved, then loaded back by `load_model_dir` in
    `dtype` ("auto": its default)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(stack, tmp)
        return load_model_dir(tmp, "cpu", dtype_named(dtype))


def run_ours(pipe: UnCLIP, batch: int, steps: tuple[int, int, int], seed: int) -> dict[str, float]:
    """One generation through generate(), driven like run_direct but timing each stage
    request (and the text encoding before the first one). Returns {stage: seconds}."""
    opts = Sampling(prior_steps=steps[0], decoder_steps=steps[1], upsampler_steps=steps[2], best_of=1,
                    prior_guidance=4.0, decoder_guidance=8.0)
    op = generate(pipe, PROMPT, n=batch, seed=seed, opts=opts)
    stages: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    request = next(op)
    stages["text+setup"] += time.perf_counter() - t0
    try:
        while True:
            t1 = time.perf_counter()
            run_to_end(pipe.stages[request.stage], request.tracks)
            stages[request.stage] += time.perf_counter() - t1
            t1 = time.perf_counter()
            request = op.send(None)
            stages["between stages"] += time.perf_counter() - t1
    except StopIteration:
        stages["between stages"] += time.perf_counter() - t1
    return dict(stages)


def run_theirs(ref: Any, pipe: UnCLIP, batch: int, steps: tuple[int, int, int], seed: int) -> None:
    text = pipe.encode_text([PROMPT])
    ref(text_model_output=(text.pooled, text.states), text_attention_mask=text.mask, num_images_per_prompt=batch,
        prior_num_inference_steps=steps[0], decoder_num_inference_steps=steps[1],
        super_res_num_inference_steps=steps[2], prior_guidance_scale=4.0, decoder_guidance_scale=8.0,
        generator=torch.Generator().manual_seed(seed), output_type="np")


Run = Callable[[int, tuple[int, ...], int], Any]  # (batch, steps, seed) -> {stage: seconds} or None


def karlo_contenders(config: str, dtype: str, channels_last: bool
                     ) -> tuple[dict[str, Run], dict[str, dict], str, Optional[str]]:
    """Our stack (as served) and diffusers' UnCLIPPipeline over the same random weights: the
    two runs, their networks, our dtype, and None: diffusers runs as its users do (`THEIRS`)."""
    stack = random_parity_stack(CONFIGS[config](), seed=0)
    ref = build_pipeline(stack)
    pipe = UnCLIP(served_stack(stack, dtype).use_channels_last(channels_last))
    calls = {"ours": lambda b, s, seed: run_ours(pipe, b, s, seed),
             "diffusers": lambda b, s, seed: run_theirs(ref, pipe, b, s, seed)}
    return calls, {"ours": our_modules(pipe), "diffusers": their_modules(ref)}, str(pipe.stack.dtype), None


def measure(calls: dict[str, Run], modules: dict[str, dict], batch: int, steps: tuple[int, ...],
            repeats: int) -> dict:
    """Alternate ours / diffusers (order flipped every repeat) after one warm-up each."""
    timers = {name: ModelTimer(modules[name]) for name in calls}
    runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
    for name in calls:  # warm-up
        calls[name](batch, steps, 0)
        timers[name].take()
    for r in range(repeats):
        for name in (("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")):
            for timer in timers.values():  # the two may share networks (Kandinsky's real config)
                timer.take()
            t0 = time.perf_counter()
            stages = calls[name](batch, steps, r + 1)
            seconds = time.perf_counter() - t0
            in_models = timers[name].take()
            runs[name].append({"seconds": seconds, "stages": stages or {}, "in_models": in_models,
                               "outside": seconds - sum(in_models.values())})
    return {name: summarize(rs, batch) for name, rs in runs.items()}


def summarize(runs: list[dict], batch: int) -> dict:
    """Median wall time, images/s, the per-stage / per-network medians and the median time
    outside the networks (of each run's own)."""
    secs = statistics.median(r["seconds"] for r in runs)

    def med(key: str) -> dict[str, float]:
        names = {n for r in runs for n in r[key]}
        return {n: statistics.median(r[key].get(n, 0.0) for r in runs) for n in sorted(names)}

    return {"seconds": secs, "images_per_s": batch / secs, "stages": med("stages"), "in_models": med("in_models"),
            "outside_s": statistics.median(r["outside"] for r in runs), "all_seconds": [r["seconds"] for r in runs]}


def profile_ours(ours: Run, batch: int, steps: tuple[int, ...], rows: int = 25) -> str:
    """torch.profiler table of one generation of ours (CPU self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ours(batch, steps, 0)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def print_table(results: dict[int, dict]) -> None:
    print(f"\n{'batch':>5} | {'ours s':>8} {'img/s':>7} | {'diffusers s':>11} {'img/s':>7} | ours/diffusers")
    for batch, res in results.items():
        o, d = res["ours"], res["diffusers"]
        print(f"{batch:>5} | {o['seconds']:8.3f} {o['images_per_s']:7.2f} | {d['seconds']:11.3f} "
              f"{d['images_per_s']:7.2f} | {o['images_per_s'] / d['images_per_s']:.2f}x")
    for batch, res in results.items():
        for name in ("ours", "diffusers"):
            r = res[name]
            stages = ", ".join(f"{k} {v:.3f}" for k, v in r["stages"].items())
            models = ", ".join(f"{k} {v:.3f}" for k, v in r["in_models"].items())
            print(f"batch {batch} {name:9}: stages [{stages}]  in networks [{models}]  "
                  f"outside networks {r['outside_s']:.3f}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("karlo", "kandinsky"), default="karlo")
    ap.add_argument("--config", choices=[*CONFIGS, "real"], default="tiny",
                    help="network sizes; real: Kandinsky 2.2's real architecture (kandinsky only)")
    ap.add_argument("--steps", default=None, help="prior,decoder[,upsampler] steps (default 25,25,7; "
                    "Kandinsky 25,25)")
    ap.add_argument("--batch", default="1,4", help="comma-separated images per prompt")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of ours")
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="OUR networks' dtype (default: the server's, `default_dtype`); diffusers runs fp32")
    ap.add_argument("--contiguous", action="store_true",
                    help="run OUR UNets in contiguous memory format (default: channels-last, as the server does)")
    ap.add_argument("--plot", type=Path, default=None, help="also draw the figure (bench/plots.py) to this PNG")
    args = ap.parse_args(argv)
    steps = tuple(int(s) for s in (args.steps or ("25,25,7" if args.family == "karlo" else "25,25")).split(","))
    batches = [int(b) for b in args.batch.split(",")]
    torch.set_num_threads(args.threads)
    if args.family == "karlo":
        if args.config == "real":
            ap.error("--config real is Kandinsky 2.2's (--family kandinsky)")
        calls, modules, dtype, theirs = karlo_contenders(args.config, args.dtype, not args.contiguous)
    else:
        from bench.kandinsky_pipeline import contenders

        calls, modules, dtype, theirs = contenders(args.config, args.dtype, not args.contiguous)
    theirs = theirs or THEIRS
    results = {}
    with torch.inference_mode():
        for b in batches:
            results[b] = measure(calls, modules, b, steps, args.repeats)
    print(f"\n{args.family} ({args.config}) ours: {dtype}, channels-last {not args.contiguous}; diffusers: {theirs}")
    print_table(results)
    if args.profile:
        with torch.inference_mode():
            print(profile_ours(calls["ours"], batches[-1], steps))
    out = {"family": args.family, "config": args.config, "dtype": dtype, "diffusers": theirs,
           "channels_last": not args.contiguous,
           "steps": steps, "repeats": args.repeats, "threads": args.threads, "torch": torch.__version__,
           "results": results,
           "ratio": {b: r["ours"]["images_per_s"] / r["diffusers"]["images_per_s"] for b, r in results.items()}}
    print(f"\nwrote {write_result(f'pipeline-{args.family}-{args.config}', out)}")
    if args.plot:
        from bench.plots import draw

        print(f"wrote {draw(out, args.plot)}")
    return out


if __name__ == "__main__":
    main()
