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
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from .gpu_settings import compile_unet, cuda_graphs, flops
from .install import CHILD_ENV, VENV, install, reexec_in
from .kandinsky import kandinsky
from .karlo import attention, keep_xformers_only_if_it_runs, make_weights, ours_vs_diffusers, precision
from .plan import Plan, plan_from
from .report import summary
from .runner import Bench, skipped
from .serving import http_load, peak_memory
from .wheels import REPO, TRAVEL_BUDGET_MIB, TRAVEL_LIMIT_MIB, WHEELS, travel_size, wheel_list

log = logging.getLogger("bench.gpu")


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
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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


if __name__ == "__main__":
    sys.exit(main())
