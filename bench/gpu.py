"""One command for one GPU machine (torch there, no network): Karlo-size random weights at
Karlo's fast preset (25/25/7 steps, 64 -> 256 px), and Kandinsky 2.2's real architecture
(4.9 B random parameters, built in memory) at 512 px, measured part by part.

    python3 -m bench.gpu --out "$OUT"                   # the GPU machine, from the repository root
    .venv/bin/python -m bench.gpu --smoke --out DIR     # CPU, tiny preset, 2 steps (tests/bench)

Parts, in order (each one guarded: an error is recorded in its section and the rest go on;
each has a time budget, enforced by a timer, inside a global one of 8 minutes that counts
the install too. Plan.budgets sum to the 480 s: install 40, weights 60, precision 45,
attention 30, ours_vs_diffusers 60, kandinsky 75, http 90, flops 15, cuda_graphs 15, compile
50 s: the first six went from 505 s (45/80/70/60/110/140, over the 480) to 325, leaving
155 to the new ones; http, which skips a load level it has no time for, runs after kandinsky):

  install            the wheels brought along (bench/wheels/, `make gpu-wheels`; WHEEL_GROUPS)
                     into a venv over the machine's python (--system-site-packages, plus a .pth
                     adding this interpreter's own site directories, so its torch is reused),
                     `pip install --no-index --find-links`, one group at a time; then this
                     script again inside that venv
  weights            `python -m tools.convert random --preset P --dtype fp16`, its initializers
                     run on the device (seconds, size, parameters per network)
  precision          float16 and bfloat16 against float32, batch 1: per stage, the max |diff|
                     of the stage's output from the very same input tracks (each stage alone),
                     and of the final images of one whole generation (errors compounding)
  attention          xformers against SDPA (pipelines.attention.set_backend), float16: images/s
                     of a batch-8 generation, alternated, and the max |diff| of the decoder's output
  ours_vs_diffusers  images/s of ours and of diffusers' UnCLIPPipeline over the same weights
                     (tests/pipelines/_diffusers_ref.py), batch 1 and 8, alternated after a
                     warm-up each (bench/pipeline.py's run_ours / run_theirs), float16 on CUDA
  kandinsky          Kandinsky 2.2's real architecture (tests/pipelines/_kandinsky_real.py:
                     seeded random weights built on the device; smoke: the tiny networks) at
                     512 px, prior/decoder steps 10/10 (smoke 2/2): float16 and bfloat16
                     against float32 (TF32 off) per stage (prior, decoder, movq; each alone
                     from the float32 run's input tracks) and end to end; then images/s of ours
                     and of diffusers' KandinskyV22PriorPipeline + KandinskyV22Pipeline built
                     around the very same modules, float16 (CPU: float32), batch 1 and 8,
                     alternated; the peak memory of that comparison alone
  http               `python -m server` under closed-loop clients at c = 1, 8, 32 (bench/load.py's
                     Server and run_level): images/s, p50/p99, mean batch per stage
  flops              one step of Kandinsky's decoder UNet (real, float16, channels-last) at
                     batch 2 and 16: FLOPs (torch.utils.flop_counter) over its measured time,
                     against the measured peak of a bf16 and an fp16 8192^3 matmul (TFLOP/s)
  cuda_graphs        the same step at batch 2 captured in a torch.cuda.CUDAGraph and replayed:
                     steps/s against eager, capture seconds, max |diff| of the outputs
  compile            the same UNet through torch.compile (mode "default": Inductor, no CUDA
                     graphs): seconds of the first (compiling) call, steps/s before and after,
                     graph breaks, max |diff|
  peak_gpu_memory    torch.cuda.max_memory_allocated of each in-process part, and the server's
                     peak reserved memory under load (its /metrics gauge, polled)

flops, cuda_graphs and compile are skipped without CUDA (also in smoke mode). All of these are
measurements: nothing here changes what the server does.

A section is {"status": "ok", ...numbers}, {"status": "skipped", "reason": ...} (e.g. "no
CUDA", "not measured: xformers not importable: ...") or {"status": "error", "error": ...}.
Results: OUT/gpu.json (rewritten after every part), OUT/gpu.log, OUT/server.log.
The weights go to a temporary folder (never under OUT: Karlo's are 7.5 GB in fp16).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from bench import terminate

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / "bench" / "wheels"
VENV = Path(tempfile.gettempdir()) / "unclip-gpu-bench-venv"
CHILD_ENV = "UNCLIP_GPU_BENCH_CHILD"  # set for the run inside the venv: start time and install result
TRAVEL_LIMIT_MIB = 64  # what the device tool carries: working tree + carried paths
TRAVEL_BUDGET_MIB = 60  # tree + wheels, leaving room for untracked files (tests/test_tree_size.py: tree <= 41)
PARTS = ("install", "weights", "precision", "attention", "ours_vs_diffusers", "kandinsky", "http", "flops",
         "cuda_graphs", "compile", "peak_gpu_memory")
COMPILE_MODE = "default"  # torch.compile's: Inductor without CUDA graphs (cuda_graphs measures those)
MIN_PART_S = 10.0  # a part with less time left than this is skipped
STOP_S = 10.0  # the server's time to exit once the load is over

log = logging.getLogger("bench.gpu")


# ---- the wheels ------------------------------------------------------------------------

@dataclass(frozen=True)
class WheelGroup:
    """Wheels installed together. `install` is named to pip; `support` is only carried, for
    dependencies the GPU image may lack or hold too old (pip takes them only if needed).
    Versions are this repository's venv's (tested together here)."""

    name: str
    install: tuple[str, ...]
    support: tuple[str, ...] = ()
    required: bool = True


# What the GPU image lacks for the server, CLIP, diffusers and xformers. The image (KINDS.md of
# the device tool: python 3.12, torch 2.11 with CUDA 13, numpy, pillow, safetensors,
# prometheus-client, transformers, timm, huggingface-hub...) has none of fastapi, starlette,
# uvicorn, pydantic (+ core, settings), python-multipart, open_clip_torch (+ ftfy), diffusers,
# redis, httpx (server/jobs/webhooks.py) or xformers; httpx, httpcore and timm are carried even
# where an image has them. Dependencies checked with the wheels' Requires-Dist, and the whole
# set offline on a python 3.12 by `make gpu-wheels-check` (bench/gpu_wheels_check.py).
# xformers 0.0.35 is a py39-none wheel of 3.1 MiB that needs torch>=2.10: it fits; whether it
# runs is measured there (keep_xformers_only_if_it_runs), else SDPA is used.
WHEEL_GROUPS: tuple[WheelGroup, ...] = (
    WheelGroup("server", ("fastapi==0.165.0", "uvicorn==0.55.0", "pydantic-settings==2.16.3",
                          "python-multipart==0.0.34", "redis==8.2.0", "httpx==0.29.0",
                          "fastapi-offline==1.7.7"),
               ("starlette==1.10.0", "pydantic==2.14.4", "pydantic_core==2.50.5", "python-dotenv==1.2.4",
                "annotated-types==0.8.0", "typing-inspection==0.4.5", "typing_extensions==4.16.0",
                "annotated-doc==0.0.7", "opentelemetry-api==1.45.2", "anyio==4.16.0", "h11==0.16.0",
                "click==8.5.1", "httpcore==1.0.9")),
    WheelGroup("clip", ("open_clip_torch==3.3.0",), ("ftfy==6.3.1", "wcwidth==0.9.5", "timm==1.0.31")),
    WheelGroup("diffusers", ("diffusers==0.42.1",),
               ("importlib_metadata==10.2.0", "lazy-importer==0.1.0", "zipp==4.1.2"), required=False),
    WheelGroup("xformers", ("xformers==0.0.35",), required=False),
)

# What the check (bench/gpu_wheels_check.py) installs as the GPU image's own packages, in a
# fresh python 3.12 venv, before the wheels: those of the image's list (KINDS.md) that the
# groups above need, with the versions KINDS.md's pip list gives, else unpinned (pip's
# newest for python 3.12 when the check first downloads them). torch and torchvision are not
# installed there (a multi-GB CUDA download): the check writes stand-in metadata for them,
# DEVICE_STUBS, so that pip's resolver sees the image's versions.
DEVICE_PACKAGES: tuple[str, ...] = (
    "numpy==2.5.2", "pillow", "safetensors==0.8.0", "prometheus-client", "huggingface-hub==1.33.0", "regex",
    "tqdm", "filelock", "fsspec", "packaging", "pyyaml", "requests", "certifi", "idna", "typing-extensions",
    "transformers",  # the Hugging Face snapshots' CLIP towers and tokenizers (pipelines/hf_clip.py)
)
DEVICE_STUBS: dict[str, str] = {"torch": "2.11.0", "torchvision": "0.26.0"}


def wheel_list(groups: str) -> list[str]:
    """Every pin of the named groups ("all" or comma-separated names), install and support."""
    names = {g.name for g in WHEEL_GROUPS} if groups == "all" else set(groups.split(","))
    return [pin for g in WHEEL_GROUPS if g.name in names for pin in g.install + g.support]


def mib(n: float) -> float:
    return round(n / 2**20, 2)


def travel_size(wheels: Path) -> dict[str, Any]:
    """Bytes the device tool would carry: tracked and untracked-not-ignored files, plus the
    wheels folder; the largest top-level folders of the tree."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    by_top: dict[str, int] = {}
    for name in filter(None, names):
        path = REPO / name
        if path.is_file() and not path.is_relative_to(wheels):
            top = "/".join(name.split("/")[:2]) if name.count("/") >= 2 else name.split("/")[0]
            by_top[top] = by_top.get(top, 0) + path.stat().st_size
    tree = sum(by_top.values())
    wheel_bytes = sum(p.stat().st_size for p in wheels.glob("*.whl")) if wheels.is_dir() else 0
    largest = dict(sorted(((k, mib(v)) for k, v in by_top.items()), key=lambda kv: -kv[1])[:6])
    return {"tree_mib": mib(tree), "wheels_mib": mib(wheel_bytes), "total_mib": mib(tree + wheel_bytes),
            "limit_mib": TRAVEL_LIMIT_MIB, "budget_mib": TRAVEL_BUDGET_MIB,
            "fits": tree + wheel_bytes <= TRAVEL_BUDGET_MIB * 2**20,
            "largest_mib": largest,
            "wheels": {p.name: mib(p.stat().st_size) for p in sorted(wheels.glob("*.whl"))} if wheels.is_dir() else {}}


# ---- the plan --------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What to measure and how long each part may take (seconds)."""

    preset: str = "karlo"
    device: str = "cuda"
    steps: tuple[int, int, int] = (25, 25, 7)  # prior, decoder, upsampler: Karlo's fast preset
    batches: tuple[int, ...] = (1, 8)
    kandinsky_steps: tuple[int, int] = (10, 10)  # prior, decoder
    kandinsky_batches: tuple[int, ...] = (1, 8)
    step_batches: tuple[int, ...] = (2, 16)  # rows of one decoder UNet step (flops; the first: graphs, compile)
    timed_steps: int = 10  # decoder steps per timed round (3 rounds)
    matmul_side: int = 8192
    concurrency: tuple[int, ...] = (1, 8, 32)
    duration_s: float = 12.0  # of each HTTP load level
    repeats: int = 2  # timed runs of each, after a warm-up
    max_batch: int = 32  # the server's UNCLIP_MAX_BATCH
    batch_profile: str = "measure"  # the server's UNCLIP_BATCH_PROFILE (measure: caps timed at its start)
    budget_s: float = 480.0
    budgets: dict[str, float] = field(default_factory=lambda: {  # 480 s in all
        "install": 40, "weights": 60, "precision": 45, "attention": 30, "ours_vs_diffusers": 60, "kandinsky": 75,
        "http": 90, "flops": 15, "cuda_graphs": 15, "compile": 50})
    install: bool = True


# 25-45 s on a lightly loaded 2-core CPU (76 s with its cores shared by three busy
# sessions); the budgets leave room for a loaded one, so that the test does not flake.
# The kandinsky part adds 15-45 s (its tiny networks, batch 1 only).
SMOKE = Plan(preset="tiny", device="cpu", steps=(2, 2, 2), batches=(1, 2), kandinsky_steps=(2, 2),
             kandinsky_batches=(1,), duration_s=1.0, repeats=1, max_batch=8, batch_profile="off", budget_s=270.0,
             budgets={"weights": 45, "precision": 45, "ours_vs_diffusers": 60, "kandinsky": 60, "http": 90},
             install=False)


def plan_from(args: argparse.Namespace) -> Plan:
    plan = SMOKE if args.smoke else Plan()
    overrides: dict[str, Any] = {}
    if args.preset:
        overrides["preset"] = args.preset
    if args.device:
        overrides["device"] = args.device
    if args.steps:
        overrides["steps"] = tuple(int(s) for s in args.steps.split(","))
    if args.duration is not None:
        overrides["duration_s"] = args.duration
    if args.budget is not None:
        overrides["budget_s"] = args.budget
    if args.skip_install:
        overrides["install"] = False
    return replace(plan, **overrides)


# ---- running parts ---------------------------------------------------------------------

class PartTimeout(BaseException):
    """A part ran past its budget (a BaseException: library code that catches Exception
    must not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in the main thread after `seconds` (SIGALRM; interrupts waits too)."""
    def fire(*_: Any) -> None:
        raise PartTimeout(f"over its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


class Bench:
    """The results so far, the log and the clock; runs one part at a time."""

    def __init__(self, plan: Plan, out: Path, started: float, results: Optional[dict] = None):
        self.plan, self.out, self.started = plan, out, started
        self.results: dict[str, Any] = results or {}
        self.cuda = False

    def left(self) -> float:
        return self.plan.budget_s - (time.time() - self.started)

    def write(self) -> None:
        self.results.setdefault("meta", {})["elapsed_s"] = round(time.time() - self.started, 1)
        (self.out / "gpu.json").write_text(json.dumps(self.results, indent=2, default=str))

    def part(self, name: str, fn: Callable[[float], dict], needs_cuda: bool = False) -> dict:
        """Run fn(deadline) within min(its budget, the time left); record its section."""
        budget = min(self.plan.budgets.get(name, 60.0), self.left())
        if needs_cuda and not self.cuda:
            res = skipped("no CUDA")
        elif budget < MIN_PART_S:
            res = skipped(f"out of time: {max(0.0, self.left()):.0f} s of the {self.plan.budget_s:.0f} s budget left")
        else:
            res = self._run(name, fn, budget)
        self.results[name] = res
        self.write()
        log.info("%s: %s", name, json.dumps(res, default=str)[:2000])
        return res

    def _run(self, name: str, fn: Callable[[float], dict], budget: float) -> dict:
        log.info("--- %s (budget %.0f s)", name, budget)
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        t0 = time.monotonic()
        try:
            with time_limit(budget):
                res = fn(time.monotonic() + budget)
            res = {"status": "ok", **res}
        except (PartTimeout, Exception) as err:  # noqa: BLE001 - one failing measurement must not stop the rest
            res = {"status": "error", "error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc(limit=-6)}
        res["part_seconds"] = round(time.monotonic() - t0, 2)
        if self.cuda:
            import torch

            res["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
            res["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        return res


# ---- install ---------------------------------------------------------------------------

def site_dirs() -> list[str]:
    """This interpreter's site directories (its venv's and the system's)."""
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]


def make_venv(venv: Path) -> Path:
    """A venv over this interpreter: --system-site-packages, and a .pth that adds this
    interpreter's own site directories (a venv made from inside a venv would otherwise see
    only the base python's). Returns its python."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                       check=True, capture_output=True, text=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    lines = "; ".join(f"site.addsitedir({d!r})" for d in site_dirs())
    Path(site, "_unclip_parent_site.pth").write_text(f"import site; {lines}\n")
    return python


def pip_install(python: Path, wheels: Path, pins: tuple[str, ...],
                no_deps: bool = False) -> subprocess.CompletedProcess[str]:
    """pip install the pins from the wheels folder alone, into the python's environment."""
    cmd = [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-cache-dir",
           "--disable-pip-version-check", "--no-compile", "-q", *(["--no-deps"] if no_deps else []), *pins]
    return subprocess.run(cmd, capture_output=True, text=True)


def install(wheels: Path, venv: Path) -> dict[str, Any]:
    """Each wheel group into the venv, resolving dependencies against what the machine has;
    a group whose resolution fails is retried with --no-deps (install and support pins)."""
    if not any(wheels.glob("*.whl")):
        raise FileNotFoundError(f"no wheels in {wheels}: run `make gpu-wheels` before the run")
    t0 = time.monotonic()
    python = make_venv(venv)
    groups: dict[str, Any] = {}
    for g in WHEEL_GROUPS:
        done = pip_install(python, wheels, g.install)
        entry: dict[str, Any] = {"ok": done.returncode == 0}
        if done.returncode:
            entry["error"] = done.stderr.strip()[-1500:]
            retry = pip_install(python, wheels, g.install + g.support, no_deps=True)
            entry.update(no_deps_retry_ok=retry.returncode == 0, no_deps_error=retry.stderr.strip()[-500:] or None)
        groups[g.name] = entry
    return {"python": str(python), "wheels_mib": mib(sum(p.stat().st_size for p in wheels.glob("*.whl"))),
            "groups": groups, "install_s": round(time.monotonic() - t0, 1)}


def reexec_in(python: Path, bench: Bench, argv: list[str]) -> None:
    """Run this command again under the venv's python (never returns)."""
    env = dict(os.environ, **{CHILD_ENV: json.dumps({"started": bench.started, "results": bench.results})})
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.chdir(REPO)
    os.execve(str(python), [str(python), "-m", "bench.gpu", *argv], env)


# ---- shared helpers --------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def load_pipe(model: Path, device: str, dtype: Any) -> Any:
    """The model directory loaded as the server loads it (channels-last UNets)."""
    from pipelines.checkpoints import load_model_dir
    from pipelines.unclip import UnCLIP

    return UnCLIP(load_model_dir(model, device, dtype).use_channels_last())


def generation(pipe: Any, steps: tuple[int, ...], batch: int, seed: int = 0) -> Any:
    """The operation of one generation of `batch` images at steps (prior, decoder[,
    upsampler]), best_of 1, at the pipeline's default size."""
    from bench.pipeline import PROMPT
    from pipelines.operations import generate
    from pipelines.unclip import Sampling

    opts = Sampling(best_of=1, **dict(zip(("prior_steps", "decoder_steps", "upsampler_steps"), steps)))
    return generate(pipe, PROMPT, n=batch, seed=seed, opts=opts)


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


# ---- the measurements ------------------------------------------------------------------

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


class MemoryPoller:
    """Polls the server's /metrics CUDA gauges once a second; keeps the peaks."""

    GAUGES = ("unclip_gpu_memory_bytes", "unclip_gpu_memory_reserved_bytes")

    def __init__(self, server: Any):
        self.server, self.peak = server, dict.fromkeys(self.GAUGES, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                for s in self.server.samples():
                    if s.name in self.peak:
                        self.peak[s.name] = max(self.peak[s.name], s.value)

    def __enter__(self) -> "MemoryPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


def http_load(plan: Plan, model: Path, out: Path, deadline: float) -> dict[str, Any]:
    """The server under closed-loop generation clients at each concurrency (bench/load.py).
    Its log (and any batch profile it measures at start, beside the log) is written next to
    the model and copied to OUT/server.log."""

    from bench.load import Server, Steps, requests_for
    from pipelines.checkpoints import CONFIG_FILE
    from pipelines.config import StackConfig

    cfg = StackConfig.load(model / CONFIG_FILE)
    size = max(cfg.sizes)
    send = requests_for(size, Steps(*plan.steps), cfg.decoder.model.image_size)["generation"]
    opts = argparse.Namespace(device=plan.device, max_batch=plan.max_batch, queue_size=2 * max(plan.concurrency),
                              batch_profile=plan.batch_profile)
    server = Server(model, opts, model.parent / "server" / "server.log")
    server.log_path.parent.mkdir(exist_ok=True)
    server.env.update(UNCLIP_DRAIN_GRACE_S="5", UNCLIP_BATCH_PROFILE=plan.batch_profile)
    levels: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        with server, MemoryPoller(server) as memory:
            ready_s = time.monotonic() - t0
            caps = server.caps() if hasattr(server, "caps") else None
            levels = run_levels(plan, server, send, deadline - STOP_S)
            stop(server)
    finally:
        if server.proc is not None and server.proc.poll() is None:  # interrupted while starting
            server.proc.kill()
        if server.log_path.exists():
            shutil.copy(server.log_path, out / "server.log")
    return {"size": size, "steps": plan.steps, "max_batch": plan.max_batch, "batch_profile": plan.batch_profile,
            "stage_caps": caps, "duration_s": plan.duration_s, "server_ready_s": round(ready_s, 1), **levels,
            "server_peak_gpu_bytes": memory.peak}


def stop(server: Any, grace_s: float = STOP_S) -> None:
    """SIGTERM, then SIGKILL after grace_s (Server.__exit__ alone may wait a minute)."""
    terminate(server.proc, grace_s)


def run_levels(plan: Plan, server: Any, send: Any, deadline: float) -> dict[str, Any]:
    """One warm-up request, then closed-loop clients at each concurrency while time is left."""
    import httpx

    from bench.load import run_level

    with httpx.Client(base_url=server.base, timeout=600) as client:
        t1 = time.monotonic()
        send(client, 0).raise_for_status()
        first_s = time.monotonic() - t1
    levels: dict[str, Any] = {}
    for c in plan.concurrency:
        if time.monotonic() + plan.duration_s + 2 * first_s > deadline:
            levels[f"c{c}"] = skipped("out of the part's time")
            continue
        levels[f"c{c}"] = asdict(run_level(server, "generation", c, plan.duration_s, [("generation", send)]))
        log.info("  c=%d: %.2f images/s", c, levels[f"c{c}"]["images_per_s"])
    return {"first_request_s": round(first_s, 2), "levels": levels}


def peak_memory(results: dict[str, Any]) -> dict[str, Any]:
    """The peaks the parts recorded (in-process) and the server's under load."""
    parts = {name: {k: r[k] for k in ("peak_gpu_allocated_bytes", "peak_gpu_reserved_bytes") if k in r}
             for name, r in results.items() if isinstance(r, dict) and "peak_gpu_allocated_bytes" in r}
    server = results.get("http", {}).get("server_peak_gpu_bytes")
    return {"in_process": parts, "server": server,
            "max_in_process_allocated_gib": round(max((p.get("peak_gpu_allocated_bytes", 0) for p in parts.values()),
                                                      default=0) / 2**30, 2)}


# ---- Kandinsky 2.2 and the GPU settings ------------------------------------------------


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
        pipe = Kandinsky(kandinsky_nets(plan, dtype)).use_channels_last()  # as the server loads it
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


def timed_out(err: BaseException) -> bool:
    """err is PartTimeout, or was raised from or while handling one."""
    seen: set[int] = set()
    cur: Optional[BaseException] = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, PartTimeout):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


# ---- main ------------------------------------------------------------------------------

def setup_logging(out: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(out / "gpu.log", mode="a")):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise


def meta(plan: Plan) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git there
        commit = ""
    return {"plan": asdict(plan), "python": platform.python_version(), "executable": sys.executable,
            "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "commit": commit or None}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="folder of gpu.json and the logs ($OUT on the machine)")
    p.add_argument("--smoke", action="store_true", help="tiny preset on the CPU, 2 steps, no install (the tests)")
    p.add_argument("--preset", choices=("tiny", "karlo"), default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--steps", default=None, help="prior,decoder,upsampler steps")
    p.add_argument("--duration", type=float, default=None, help="seconds of each HTTP load level")
    p.add_argument("--budget", type=float, default=None, help="global time budget, seconds")
    p.add_argument("--wheels", type=Path, default=WHEELS, help="folder of the wheels to install")
    p.add_argument("--skip-install", action="store_true", help="use this python as it is")
    p.add_argument("--list-wheels", metavar="GROUPS", help="print the pins of GROUPS (all or a,b) and exit")
    p.add_argument("--check-size", action="store_true", help="print what the device tool would carry and exit "
                   f"(status 1 when over {TRAVEL_BUDGET_MIB} MiB of its {TRAVEL_LIMIT_MIB})")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list_wheels:
        print("\n".join(wheel_list(args.list_wheels)))
        return 0
    if args.check_size:
        size = travel_size(args.wheels)
        print(json.dumps(size, indent=2))
        return 0 if size["fits"] else 1
    plan = plan_from(args)
    out = args.out or REPO / "bench" / "results" / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    child = json.loads(os.environ.pop(CHILD_ENV, "null"))
    bench = Bench(plan, out, child["started"] if child else time.time(), child["results"] if child else None)
    if not child:
        if not plan.install:
            bench.results["install"] = skipped("smoke mode" if args.smoke else "--skip-install")
        else:
            res = bench.part("install", lambda _: install(args.wheels, VENV))
            if res["status"] == "ok":
                reexec_in(Path(res["python"]), bench, argv)
    return measure(bench, plan)


def measure(bench: Bench, plan: Plan) -> int:
    """Every part after the install, then the summary."""
    import torch

    bench.cuda = plan.device == "cuda" and torch.cuda.is_available()
    bench.results["meta"] = {**meta(plan), "budget_s": plan.budget_s}
    keep_xformers_only_if_it_runs(bench)
    problem = bench.results["meta"].get("xformers_problem", "xformers is not installed")
    if plan.device == "cuda" and not bench.cuda:
        log.warning("no CUDA on this machine: every part needs it")
    with tempfile.TemporaryDirectory(prefix="unclip-gpu-bench-") as tmp:
        model = Path(tmp) / plan.preset
        device_ok = bench.cuda or plan.device == "cpu"
        bench.part("weights", lambda d: make_weights(plan, model, d), needs_cuda=not device_ok)
        have_model = bench.results["weights"]["status"] == "ok"
        for name, fn in (("precision", lambda d: precision(plan, model, d)),
                         ("attention", lambda d: attention(plan, model, d, problem)),
                         ("ours_vs_diffusers", lambda d: ours_vs_diffusers(plan, model, d)),
                         ("kandinsky", lambda d: kandinsky(plan, d)),  # its own networks, in memory
                         ("http", lambda d: http_load(plan, model, bench.out, d))):
            if not have_model and name != "kandinsky":
                bench.results[name] = skipped("no weights (see the weights section)")
                continue
            bench.part(name, fn, needs_cuda=name == "attention" or not device_ok)
    for name, fn in (("flops", flops), ("cuda_graphs", cuda_graphs), ("compile", compile_unet)):
        bench.part(name, lambda d, fn=fn: fn(plan, d), needs_cuda=True)
    bench.results["peak_gpu_memory"] = (peak_memory(bench.results) | {"status": "ok"} if bench.cuda
                                        else skipped("no CUDA"))
    bench.write()
    for line in summary(bench.results):
        log.info("%s", line)
    log.info("wrote %s", bench.out / "gpu.json")
    return 0


def summary(results: dict[str, Any]) -> list[str]:
    """A few lines of the headline numbers (the JSON holds the rest)."""
    lines = [f"{name}: {r['status']} {r.get('reason') or r.get('error') or ''}".rstrip()
             for name, r in results.items() if name in PARTS]
    lines += precision_lines("precision", results.get("precision", {}))
    if "xformers_over_sdpa" in results.get("attention", {}):
        lines.append(f"xformers / sdpa images/s: {results['attention']['xformers_over_sdpa']:.2f}")
    lines += versus_lines("", results.get("ours_vs_diffusers", {}))
    for key, r in results.get("http", {}).get("levels", {}).items():
        if "images_per_s" in r:
            lines.append(f"http {key}: {r['images_per_s']:.2f} images/s, p50 {r['p50_s']:.2f} s, "
                         f"batch by stage {r['batch_by_stage']}")
    k = results.get("kandinsky", {})
    lines += precision_lines("kandinsky precision", k.get("precision", {}))
    lines += versus_lines("kandinsky ", k)
    if "speed_peak_gpu_allocated_bytes" in k:
        lines.append(f"kandinsky peak GPU memory: {k['speed_peak_gpu_allocated_bytes'] / 2**30:.1f} GiB "
                     f"(speed runs), {k['peak_gpu_allocated_bytes'] / 2**30:.1f} GiB (part)")
    return lines + gpu_setting_lines(results)


def precision_lines(label: str, section: dict[str, Any]) -> list[str]:
    lines = []
    for dtype, r in section.items():
        if isinstance(r, dict) and "stages" in r:
            errs = {k: round(v["max_abs"], 4) for k, v in {**r["stages"], "end_to_end": r["end_to_end"]}.items()}
            lines.append(f"{label} {dtype} max |diff|: {errs}")
    return lines


def versus_lines(label: str, section: dict[str, Any]) -> list[str]:
    return [f"{label}{key}: ours {r['ours']['images_per_s']:.2f} images/s, diffusers "
            f"{r['diffusers']['images_per_s']:.2f} ({r['ours_over_diffusers']:.2f}x)"
            for key, r in section.items() if key.startswith("batch_")]


def gpu_setting_lines(results: dict[str, Any]) -> list[str]:
    """flops, cuda_graphs and compile, where measured."""
    lines = []
    f = results.get("flops", {})
    if "matmul_peak" in f:
        lines.append(f"matmul peak {f['matmul_peak']['bfloat16']['side']}^3: bf16 "
                     f"{f['matmul_peak']['bfloat16']['tflop_s']:.0f} TFLOP/s, fp16 "
                     f"{f['matmul_peak']['float16']['tflop_s']:.0f}")
    for key, r in f.items():
        if key.startswith("batch_"):
            lines.append(f"decoder step {key}: {r['flops_per_step'] / 1e12:.2f} TFLOP in {r['median_step_s'] * 1e3:.1f}"
                         f" ms = {r['tflop_s']:.0f} TFLOP/s ({100 * r['of_bf16_peak']:.0f}% of the bf16 peak)")
    g = results.get("cuda_graphs", {})
    if "graph_over_eager" in g:
        lines.append(f"cuda graph, decoder step batch {g['batch']}: {g['eager']['steps_per_s']:.1f} -> "
                     f"{g['graph']['steps_per_s']:.1f} steps/s ({g['graph_over_eager']:.2f}x)")
    c = results.get("compile", {})
    if "compiled_over_eager" in c:
        lines.append(f"torch.compile ({c['mode']}), decoder step batch {c['batch']}: {c['compile_s']:.0f} s to "
                     f"compile, {c['eager']['steps_per_s']:.1f} -> {c['compiled']['steps_per_s']:.1f} steps/s "
                     f"({c['compiled_over_eager']:.2f}x)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
