"""torch.compile of one stage's network(s) against eager: compile time, steps/s, and what
dynamo did (frames, recompiles and their guard failures, graph breaks).

    .venv/bin/python -m bench.compile [--model tiny|default] [--stage upsampler.0] [--steps 4]
        [--batch 1,2] [--dynamic false|true|auto] [--freezing] [--contiguous] [--device cpu|cuda]

The stage's tracks come from `generate` (earlier stages are skipped, not run: their noise
stands in for their output), so each run of `run_to_end` sees the real batch, guidance rows,
`--steps` distinct timesteps and, where a stage has one, the last-step network at t = 0. For
every batch size, the first compiled run is timed on its own (it compiles at that shape),
then `--repeats` runs alternate eager and compiled networks step by step (adjacent steps
share the machine's load); the best and the median step of each are reported.
Inductor's cache goes to a fresh directory unless --warm-cache, so compile times are cold.

Findings (torch 2.14.1, CPU: 2 cores shared with other sessions' work, so step times
swing 2x within a run: read eager against compiled within a row, where steps alternate;
channels-last as the server runs; inductor's cache cold). "compile s": the first compiled
run at that batch size (compiling plus its steps); then best / median ms per step, eager
and compiled, and best eager / best compiled:

  default upsampler.1 (5 steps), dynamic=False
    batch 1: 58.4 s   148.5 / 162.8   149.5 / 166.2   0.99x
    batch 2: 51.2 s   306.2 / 320.1   274.7 / 293.7   1.11x   (recompiled: batch 1 -> 2)
  default upsampler.0 (8 steps), dynamic=None
    batch 1: 184.4 s  568 / 1169      391 / 1187      1.45x   (medians equal: noise)
    batch 2: 114.4 s  645 / 846       553 / 699       1.17x   (recompiled)
  default decoder (4 steps, guided: 2 rows an image), dynamic=None
    batch 1: 151.7 s  84.4 / 170.2    66.8 / 100.2    1.26x
    batch 2: 106.1 s  72.8 / 85.4     55.6 / 62.8     1.31x   (recompiled: rows 2 -> 4)
  tiny upsampler.0 (4 steps), dynamic=None
    batch 1: 46.4 s   17.3 / 18.1     13.5 / 15.0     1.28x
    batch 2: 44.6 s   29.6 / 72.8     24.6 / 182      1.20x   (recompiled)
    batch 3: 0.1 s    37.3 / 45.4     35.8 / 39.2     1.04x   (no recompile: symbolic batch)

Earlier runs (runs, not steps, alternated; medians): dynamic=True recompiles at batch 2
too (70.0 s, 52.9 s, then 0.3 s at batch 3); inductor freezing on default upsampler.1:
92.5 s, 0.91x; dynamic=False on tiny upsampler.0: 33.3 s, 28.4 s (recompile), 1.02-1.15x.

    .venv/bin/python -m bench.compile --model default --stage upsampler.1 --steps 5 --repeats 3
    .venv/bin/python -m bench.compile --model default --stage decoder --dynamic auto --repeats 3
    .venv/bin/python -m bench.compile --model tiny --stage upsampler.0 --batch 1,2,3 --dynamic auto

- The "~90x" is compile time against the few steps a stage runs: the first compiled run of
  the default model's upsampler.1 (its 5 steps) took 79-97x an eager run (50-65 s of
  compiling for a 0.13-0.15 s step). Per step, compiled upsampler.1 is no faster at batch 1
  (0.99x; the issue's 0.104 s against 0.089 s is the same finding) and 1.1x at batch 2:
  inductor calls the same oneDNN convolutions, and what it fuses (GroupNorm, SiLU, adds)
  is a small share of a 256 px step. Freezing (prepacked weights) did not help (0.91x).
  The 32 px decoder (attention, many small ops) gains most: 1.26-1.31x per step.
- Recompiles come from the batch size only: dynamo's one guard failure is "tensor 'x' size
  mismatch at index 0" (for the decoder, rows 2 -> 4: guided rows double the batch).
  Timesteps reach the network as a tensor [B] (guarded on its shape, never its values) and
  guidance is applied to the outputs in `Stage.predict`, so no timestep or guidance value
  recompiles: 4-5 distinct timesteps ran on one graph. The last-step network shares the
  graph of `model` (same code; parameters are graph inputs), no extra compile.
- dynamic=False compiles once per distinct batch size (the server's batches vary from 1 to
  max_batch, times two for guided rows: up to recompile_limit = 8 compiles of 30-65 s per
  network, then eager). dynamic=None (auto) and True both compile batch 1 specialised and
  the second size with a symbolic batch, then never again: two compiles per network.
  Even `backed_size_oblivious` keeps batch 1 apart ("timesteps.size()[0] <= 1" from the
  convolution's meta function).
- No graph break anywhere (frames total = ok): `attention` picks SDPA or xformers in
  Python before the call; the upsamplers have no attention.

So no compile setting on CPU. The decoder's 1.3x is the only gain clear of the noise,
and the decoder is 5-20% of a default 256 px generation here (stage times of three runs),
so 1-5% of a generation, paid
for with two 1.5-2.5 min compiles at every start (batch 1, then the symbolic batch) and
paid back only after ~6,000-8,600 decoder steps (1,500-2,100 requests). The upsamplers
are within noise. On CUDA the small networks are launch-bound, where mode="reduce-
overhead" (CUDA graphs) may pay: measure there first (`--device cuda --dtype float16
--dynamic auto --mode reduce-overhead`). If it does, the setting to propose is
UNCLIP_COMPILE=off|default|reduce-overhead (CUDA only, off by default): compile with
dynamic=None, warm every network at batch 1 and 2 in the start's warm-up, and raise
torch._dynamo.config.recompile_limit above the number of networks' shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from bench import write_result
from pipelines.checkpoints import load_model_dir, random_stack, save_model_dir
from pipelines.config import StackConfig
from pipelines.operations import generate
from pipelines.sampling import Stage, Track
from pipelines.unclip import Sampling, UnCLIP

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle above a blue square"


def build_pipe(model: str, device: str, dtype: torch.dtype, channels_last: bool) -> UnCLIP:
    """The tiny random stack (seed 0, through a temporary model directory) or a model of
    weights/ (the shipped `default`), loaded as the server loads it."""
    with tempfile.TemporaryDirectory(prefix="compile-model-") as tmp:
        path = REPO / "weights" / model
        if model == "tiny":
            path = Path(tmp) / "tiny"
            save_model_dir(random_stack(StackConfig.tiny(), seed=0), path)
        stack = load_model_dir(path, device, dtype)
    return UnCLIP(stack.use_channels_last(channels_last))


def stage_networks(stage: Stage) -> dict[str, tuple[nn.Module, str]]:
    """Where a stage holds its networks: {name: (owner module, attribute)}. An upsampler
    holds `model` and, if it has one, `last_step_model` (run at t = 0)."""
    if stage.key.startswith("upsampler"):
        nets = {"model": (stage.up, "model")}
        if stage.up.last_step_model is not None:
            nets["last_step_model"] = (stage.up, "last_step_model")
        return nets
    return {stage.key: (stage.stack, stage.key)}


@contextlib.contextmanager
def swapped(nets: dict[str, tuple[nn.Module, str]], compiled: dict[str, nn.Module]) -> Iterator[None]:
    """The compiled modules in place of the eager ones for the duration."""
    eager = {name: getattr(owner, attr) for name, (owner, attr) in nets.items()}
    for name, (owner, attr) in nets.items():
        setattr(owner, attr, compiled[name])
    try:
        yield
    finally:
        for name, (owner, attr) in nets.items():
            setattr(owner, attr, eager[name])


def tracks_for(pipe: UnCLIP, key: str, batch: int, steps: int, seed: int) -> list[Track]:
    """The tracks a generation of `batch` images hands stage `key`, with `steps` steps in
    every stage and best_of 1. Stages before it are skipped (their tracks keep their noise)."""
    opts = Sampling(prior_steps=steps, decoder_steps=steps, upsampler_steps=steps, best_of=1)
    op = generate(pipe, PROMPT, n=batch, seed=seed, opts=opts)
    request = next(op)
    while request.stage != key:
        request = op.send(None)
    op.close()
    return request.tracks


def timed_steps(stage: Stage, tracks: list[Track], sync: bool) -> list[float]:
    """Run the tracks to the end, one batched `Stage.step` at a time: seconds of each step."""
    times = []
    while not all(tr.done for tr in tracks):
        times.append(timed_step(stage, tracks, sync))
    return times


def timed_step(stage: Stage, tracks: list[Track], sync: bool) -> float:
    t0 = time.perf_counter()
    stage.step([tr for tr in tracks if not tr.done])
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def alternated_steps(stage: Stage, tracks: list[Track], nets: dict, compiled: dict, first: str,
                     sync: bool) -> dict[str, list[float]]:
    """Run the tracks to the end, eager and compiled networks taking turns step by step
    (`first` first), so that both see the same load of a shared machine."""
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    turn = ["eager", "compiled"] if first == "eager" else ["compiled", "eager"]
    while not all(tr.done for tr in tracks):
        name = turn[len(times["eager"]) + len(times["compiled"]) & 1]
        with swapped(nets, compiled) if name == "compiled" else contextlib.nullcontext():
            times[name].append(timed_step(stage, tracks, sync))
    return times


def dynamo_counters() -> dict[str, Any]:
    """torch._dynamo's counters since the last reset: frames, graphs, recompiles with their
    guard failures, graph breaks with their reasons."""
    from torch._dynamo.utils import counters, guard_failures

    failures = {f"{code.co_name}:{code.co_firstlineno}": [str(r) for r in reasons]
                for code, reasons in guard_failures.items()}
    return {"frames": dict(counters["frames"]), "stats": dict(counters["stats"]),
            "recompiles": dict(counters["recompiles"]), "guard_failures": failures,
            "graph_breaks": dict(counters["graph_break"]), "unique_graphs": counters["stats"].get("unique_graphs", 0)}


def compile_networks(nets: dict[str, tuple[nn.Module, str]], dynamic: str, mode: str | None) -> dict[str, nn.Module]:
    """torch.compile each network (nothing is compiled until its first call)."""
    dyn = {"false": False, "true": True, "auto": None, "oblivious": True}[dynamic]
    return {name: torch.compile(getattr(owner, attr), dynamic=dyn, mode=mode) for name, (owner, attr) in nets.items()}


def measure_batch(pipe: UnCLIP, stage: Stage, nets: dict, compiled: dict, batch: int, args: argparse.Namespace,
                  sync: bool) -> dict[str, Any]:
    """Eager and compiled steps of one batch size: the first compiled run (compiles at this
    shape) on its own, then `repeats` runs whose steps alternate eager and compiled, after
    one eager warm-up."""
    fresh = lambda r: tracks_for(pipe, stage.key, batch, args.steps, seed=r)  # noqa: E731
    timed_steps(stage, fresh(0), sync)  # eager warm-up
    with swapped(nets, compiled):
        t0 = time.perf_counter()
        first = timed_steps(stage, fresh(0), sync)
        first_run_s = time.perf_counter() - t0
    runs: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.repeats):
        for name, times in alternated_steps(stage, fresh(r + 1), nets, compiled, ("eager", "compiled")[r % 2],
                                            sync).items():
            runs[name] += times
    # the best step of each is the estimate least disturbed by other work on a shared machine
    eager_s, comp_s = min(runs["eager"]), min(runs["compiled"])
    return {"batch": batch, "first_compiled_run_s": round(first_run_s, 3), "first_run_steps_s": first,
            "eager_step_s": eager_s, "compiled_step_s": comp_s, "eager_median_s": statistics.median(runs["eager"]),
            "compiled_median_s": statistics.median(runs["compiled"]), "eager_steps_per_s": 1 / eager_s,
            "compiled_steps_per_s": 1 / comp_s, "speedup": eager_s / comp_s,
            "break_even_steps": _break_even(max(0.0, first_run_s - comp_s * len(first)), eager_s, comp_s)}


def _break_even(compile_s: float, eager_s: float, comp_s: float) -> float | None:
    """Steps after which the compile time is paid back (None: never, compiled is not faster)."""
    return compile_s / (eager_s - comp_s) if eager_s > comp_s else None


def verdict(results: list[dict], stage_steps: int) -> str:
    """One line: does compiling pay on this stage, counting its compile time?"""
    lines = []
    for r in results:
        be = r["break_even_steps"]
        pays = f"pays back after {be:.0f} steps" if be is not None else "never pays back (not faster per step)"
        first_over_eager = r["first_compiled_run_s"] / (r["eager_step_s"] * stage_steps)
        lines.append(f"batch {r['batch']}: {r['speedup']:.2f}x per step, {pays}; first compiled run "
                     f"{first_over_eager:.0f}x an eager run of {stage_steps} steps")
    return "; ".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (random, seed 0) or a folder of weights/ (default)")
    p.add_argument("--stage", default="upsampler.0", help="prior, decoder, upsampler.N")
    p.add_argument("--steps", type=int, default=4, help="sampling steps of a run (distinct timesteps)")
    p.add_argument("--batch", default="1,2", help="comma-separated images per run")
    p.add_argument("--repeats", type=int, default=2, help="alternated runs of each after the first")
    p.add_argument("--dynamic", choices=("false", "true", "auto", "oblivious"), default="false",
                   help="torch.compile(dynamic=...): False, True or None (auto); oblivious: True with sizes "
                        "0/1 not specialized (backed_size_oblivious), so batch 1 shares the symbolic graph")
    p.add_argument("--mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)")
    p.add_argument("--freezing", action="store_true", help="inductor freezing (weights as constants, prepacked)")
    p.add_argument("--contiguous", action="store_true", help="NCHW weights instead of the server's channels-last")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warm-cache", action="store_true", help="keep inductor's usual cache (warm compile times)")
    p.add_argument("--log-recompiles", action="store_true", help="also print dynamo's recompile log")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    torch.set_num_threads(args.threads)
    if args.log_recompiles:
        torch._logging.set_logs(recompiles=True, graph_breaks=True)
    import torch._inductor.config as inductor_config

    inductor_config.freezing = args.freezing
    torch.fx.experimental._config.backed_size_oblivious = args.dynamic == "oblivious"
    torch._dynamo.reset()
    pipe = build_pipe(args.model, args.device, getattr(torch, args.dtype), not args.contiguous)
    stage = pipe.stages[args.stage]
    nets = stage_networks(stage)
    compiled = compile_networks(nets, args.dynamic, args.mode)
    results = []
    with torch.inference_mode():
        for b in (int(x) for x in args.batch.split(",")):
            results.append(measure_batch(pipe, stage, nets, compiled, b, args, args.device == "cuda"))
            r = results[-1]
            print(f"batch {b}: first compiled run {r['first_compiled_run_s']:.1f} s; step best / median: eager "
                  f"{r['eager_step_s'] * 1000:.1f} / {r['eager_median_s'] * 1000:.1f} ms, compiled "
                  f"{r['compiled_step_s'] * 1000:.1f} / {r['compiled_median_s'] * 1000:.1f} ms "
                  f"({r['speedup']:.2f}x)", flush=True)
    dyn = dynamo_counters()
    out = {"model": args.model, "stage": args.stage, "steps": args.steps, "dynamic": args.dynamic,
           "mode": args.mode, "freezing": args.freezing, "dtype": args.dtype, "channels_last": not args.contiguous,
           "device": args.device, "threads": args.threads, "torch": torch.__version__,
           "networks": list(nets), "results": results, "dynamo": dyn, "verdict": verdict(results, args.steps)}
    print("dynamo:", json.dumps({k: dyn[k] for k in ("frames", "recompiles", "unique_graphs", "graph_breaks")}))
    for code, reasons in dyn["guard_failures"].items():
        print(f"  recompiled {code}: {reasons}")
    print("verdict:", out["verdict"])
    print(f"wrote {write_result(f'compile-{args.model}-{args.stage}', out)}")
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
