"""Load test of the HTTP server: closed-loop clients at several concurrencies.

Starts `python -m server` on 127.0.0.1 (a free port) with the model directory from
UNCLIP_MODEL_DIR or, without it, a seeded random tiny model written to a temporary
directory; loads the same model in this process for the direct reference (`run_direct`);
then runs closed-loop clients (each sends a request, waits for the answer, sends the next)
for --duration seconds at every concurrency of --concurrency with generations, and one
mixed run (generations, variations, edits, interpolations, text diffs) at
--mixed-concurrency.

Prints per run: images/s, request p50/p99 latency, mean batch size (samples per model call,
from the server's /metrics) and the ratios throughput(max c)/throughput(1) and HTTP
latency / direct latency at concurrency 1 (medians of the same generation sent over HTTP
and run by `run_direct`, alternated one at a time, and the c=1 run's p50 / that direct
median), and the ceiling of the throughput ratio on this device: run_direct's images/s with
--max-batch images in one batch over its images/s with one. Writes bench/results/load-<model>-<time>.json.

    .venv/bin/python -m bench.load [--duration 20] [--concurrency 1,4,16]
        [--steps 25,8,4] [--size 64] [--max-batch 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as MetricSample

REPO = Path(__file__).resolve().parents[1]

RESULTS = REPO / "bench" / "results"
PROMPTS = ["a red circle above a blue square", "two green triangles", "a yellow star on black", "a purple ring"]


# ---- the server ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_dir(tmp: Path) -> Path:
    """UNCLIP_MODEL_DIR, or a seeded random tiny model written under tmp."""
    if os.environ.get("UNCLIP_MODEL_DIR"):
        return Path(os.environ["UNCLIP_MODEL_DIR"])
    from pipelines.checkpoints import random_stack, save_model_dir
    from pipelines.config import StackConfig

    path = tmp / "tiny"
    save_model_dir(random_stack(StackConfig.tiny(), seed=0), path)
    return path


class Server:
    """`python -m server` as a subprocess, ready on enter, SIGTERM on exit."""

    def __init__(self, model: Path, args: argparse.Namespace, log_path: Path):
        self.port, self.log_path = free_port(), log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "UNCLIP_MODEL_DIR": str(model),
                    "UNCLIP_HOST": "127.0.0.1", "UNCLIP_PORT": str(self.port), "UNCLIP_DEVICE": args.device,
                    "UNCLIP_MAX_BATCH": str(args.max_batch), "UNCLIP_QUEUE_SIZE": str(args.queue_size),
                    "UNCLIP_LOG_LEVEL": "warning", "UNCLIP_API_KEYS": ""}
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Server":
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: see {self.log_path}")
            try:
                if httpx.get(self.base + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"server not ready after 300 s: see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def samples(self) -> Iterator[MetricSample]:
        """Every sample of the server's /metrics, as prometheus_client parses them."""
        for family in text_string_to_metric_families(httpx.get(self.base + "/metrics", timeout=10).text):
            yield from family.samples

    def batch_totals(self) -> dict[str, float]:
        """Cumulative engine counters from /metrics: samples and calls per stage, mixed calls."""
        out: dict[str, float] = defaultdict(float)
        for s in self.samples():
            if s.name in ("unclip_batch_size_sum", "unclip_batch_size_count"):
                out[s.name.rsplit("_", 1)[1]] += s.value
                out[f"{s.labels['stage']}.{s.name.rsplit('_', 1)[1]}"] += s.value
            elif s.name == "unclip_batch_mixed_total":
                out["mixed"] += s.value
        return out


# ---- requests ------------------------------------------------------------------------

def png(size: int, seed: int, alpha: Optional[np.ndarray] = None) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(np.dstack([pixels, alpha]), "RGBA") if alpha is not None else Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Steps:
    prior: Optional[int]
    decoder: Optional[int]
    upsampler: Optional[int]

    def decoder_fields(self) -> dict[str, str]:
        fields = {"decoder_steps": self.decoder, "upsampler_steps": self.upsampler}
        return {k: str(v) for k, v in fields.items() if v is not None}

    def all_fields(self) -> dict[str, str]:
        return {**self.decoder_fields(), **({"prior_steps": str(self.prior)} if self.prior else {})}


Send = Callable[[httpx.Client, int], httpx.Response]


def requests_for(size: int, steps: Steps, in_size: int) -> dict[str, Send]:
    """One sender per operation kind: (client, sequence number) -> response."""
    common = {"size": f"{size}x{size}", "response_format": "b64_json"}
    alpha = np.full((in_size, in_size), 255, np.uint8)
    alpha[:, : in_size // 2] = 0
    images = [png(in_size, s) for s in range(4)]
    masked = png(in_size, 9, alpha)

    def generation(c: httpx.Client, i: int) -> httpx.Response:
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "n": 1, "seed": i, **common,
                **{k: int(v) for k, v in steps.all_fields().items()}}
        return c.post("/v1/images/generations", json=body)

    def variation(c: httpx.Client, i: int) -> httpx.Response:
        return c.post("/v1/images/variations", files={"image": ("a.png", images[i % 4], "image/png")},
                      data={"n": "1", "seed": str(i), **common, **steps.decoder_fields()})

    def edit(c: httpx.Client, i: int) -> httpx.Response:
        return c.post("/v1/images/edits", files={"image": ("a.png", masked, "image/png")},
                      data={"prompt": PROMPTS[i % len(PROMPTS)], "n": "1", "seed": str(i), **common,
                            **steps.all_fields()})

    def interpolation(c: httpx.Client, i: int) -> httpx.Response:
        files = [("image[]", ("a.png", images[i % 4], "image/png")),
                 ("image[]", ("b.png", images[(i + 1) % 4], "image/png"))]
        return c.post("/v1/images/interpolations", files=files,
                      data={"frames": "3", "seed": str(i), **common, **steps.all_fields()})

    def text_diff(c: httpx.Client, i: int) -> httpx.Response:
        return c.post("/v1/images/text-diffs", files={"image": ("a.png", images[i % 4], "image/png")},
                      data={"prompt": "a blue square", "source_prompt": "a red circle", "frames": "3",
                            "seed": str(i), **common, **steps.decoder_fields()})

    return {"generation": generation, "variation": variation, "edit": edit, "interpolation": interpolation,
            "text_diff": text_diff}


# ---- closed-loop clients -------------------------------------------------------------

@dataclass
class Sample:
    kind: str
    start: float
    seconds: float
    status: int
    images: int


@dataclass
class RunResult:
    name: str
    concurrency: int
    seconds: float
    requests: int
    errors: dict[str, int]
    images: int
    images_per_s: float
    p50_s: float
    p99_s: float
    mean_s: float
    mean_batch: Optional[float]
    batch_by_stage: dict[str, float] = field(default_factory=dict)
    mixed_batches: Optional[float] = None
    p50_by_kind: dict[str, float] = field(default_factory=dict)


def client_loop(base: str, kinds: list[tuple[str, Send]], offset: int, stop_at: float, out: list[Sample]) -> None:
    """One closed-loop client: request, wait, repeat until stop_at (the last one finishes)."""
    with httpx.Client(base_url=base, timeout=600) as c:
        i = 0
        while time.monotonic() < stop_at:
            kind, send = kinds[(offset + i) % len(kinds)]
            t0 = time.monotonic()
            r = send(c, offset * 100_000 + i)
            images = len(r.json().get("data", [])) if r.status_code == 200 else 0
            out.append(Sample(kind, t0, time.monotonic() - t0, r.status_code, images))
            i += 1


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_level(server: Server, name: str, concurrency: int, duration: float, kinds: list[tuple[str, Send]]) -> RunResult:
    before = server.batch_totals()
    samples: list[Sample] = []
    start = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(server.base, kinds, k, start + duration, samples))
               for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    after = server.batch_totals()
    return summarize(name, concurrency, elapsed, samples, before, after)


def summarize(name: str, concurrency: int, elapsed: float, samples: list[Sample], before: dict,
              after: dict) -> RunResult:
    ok = [s for s in samples if s.status == 200]
    lat = [s.seconds for s in ok]
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    stages = sorted({k.rsplit(".", 1)[0] for k in delta if k.endswith(".count") and delta[k]})
    by_kind: dict[str, list[float]] = defaultdict(list)
    for s in ok:
        by_kind[s.kind].append(s.seconds)
    images = sum(s.images for s in ok)
    return RunResult(
        name=name, concurrency=concurrency, seconds=round(elapsed, 3), requests=len(samples),
        errors=dict(Counter(str(s.status) for s in samples if s.status != 200)), images=images,
        images_per_s=images / elapsed, p50_s=percentile(lat, 50), p99_s=percentile(lat, 99),
        mean_s=statistics.fmean(lat) if lat else float("nan"),
        mean_batch=delta["sum"] / delta["count"] if delta.get("count") else None,
        batch_by_stage={st: delta[f"{st}.sum"] / delta[f"{st}.count"] for st in stages},
        mixed_batches=delta.get("mixed"),
        p50_by_kind={k: percentile(v, 50) for k, v in sorted(by_kind.items())},
    )


# ---- the direct reference ------------------------------------------------------------

class Direct:
    """The same model in this process, driven by run_direct (the sequential reference)."""

    def __init__(self, model: Path, args: argparse.Namespace, steps: Steps):
        import torch

        from pipelines.checkpoints import load_model_dir
        from pipelines.unclip import Sampling, UnCLIP

        self.cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        self.pipe = UnCLIP(load_model_dir(model, "cuda" if self.cuda else "cpu"))
        self.opts = Sampling(prior_steps=steps.prior, decoder_steps=steps.decoder, upsampler_steps=steps.upsampler)
        self.size = args.size

    def generation(self, i: int, n: int = 1) -> float:
        """Seconds of one generation of n images, as the HTTP generation sender asks for it."""
        import torch

        from pipelines.operations import generate
        from pipelines.unclip import run_direct

        t0 = time.perf_counter()
        op = generate(self.pipe, PROMPTS[i % len(PROMPTS)], n=n, seed=i, size=self.size, opts=self.opts)
        run_direct(self.pipe, op, max_batch=n)
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def paired_latency(server: Server, direct: Direct, send: Send, repeats: int) -> dict[str, float]:
    """Median seconds of the same generation over HTTP and by run_direct on this thread,
    alternated one by one (never at the same time) so that drifting machine load hits both
    alike. All of this process's torch work stays on this one thread (see server/engine.py
    on OpenMP pools per thread)."""
    times: dict[str, list[float]] = defaultdict(list)
    with httpx.Client(base_url=server.base, timeout=600) as c:
        for i in range(repeats + 1):
            times["direct"].append(direct.generation(i))
            t0 = time.perf_counter()
            send(c, i).raise_for_status()
            times["http_vs_direct"].append(time.perf_counter() - t0)
    return {k: statistics.median(v[1:]) for k, v in times.items()}  # the first of each warms up


def batching_ceiling(direct: Direct, n: int, repeats: int = 3) -> float:
    """What batching alone can buy on this device: images/s of run_direct with n images in
    one batch over images/s with one (best of `repeats` each, alternated)."""
    one, many = [], []
    for i in range(repeats):
        one.append(direct.generation(i))
        many.append(direct.generation(i, n) / n)
    return min(one) / min(many)


# ---- main ----------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts (generations)")
    p.add_argument("--mixed-concurrency", type=int, default=16, help="clients of the mixed run (0: skip)")
    p.add_argument("--steps", default="", help="prior,decoder,upsampler steps (default: the model's)")
    p.add_argument("--size", type=int, default=None, help="output size (default: the model's largest)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--pairs", type=int, default=10, help="alternated direct/HTTP generations for the latency ratio")
    return p.parse_args()


def parse_steps(text: str) -> Steps:
    parts = [int(x) if x else None for x in text.split(",")] if text else []
    parts += [None] * (3 - len(parts))
    return Steps(*parts[:3])


def report(runs: list[RunResult], ratios: dict[str, float], direct_s: float) -> None:
    print(f"\ndirect run_direct latency (generation, median): {direct_s * 1000:.1f} ms")
    print(f"{'run':<14}{'c':>4}{'req':>6}{'err':>5}{'img/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}")
    for r in runs:
        batch = f"{r.mean_batch:.2f}" if r.mean_batch is not None else "-"
        print(f"{r.name:<14}{r.concurrency:>4}{r.requests:>6}{sum(r.errors.values()):>5}{r.images_per_s:>9.2f}"
              f"{r.p50_s * 1000:>9.1f}{r.p99_s * 1000:>9.1f}{batch:>7}")
    for r in runs:
        if r.name == "mixed":
            print("mixed p50 by kind (ms):", {k: round(v * 1000, 1) for k, v in r.p50_by_kind.items()},
                  f"mixed-kind batches: {r.mixed_batches:.0f}" if r.mixed_batches is not None else "")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")


def main() -> int:
    args = parse_args()
    steps = parse_steps(args.steps)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="unclip-load-") as tmp:
        model = model_dir(Path(tmp))
        from pipelines.checkpoints import CONFIG_FILE
        from pipelines.config import StackConfig

        cfg = StackConfig.load(model / CONFIG_FILE)
        args.size = args.size or max(cfg.sizes)
        print(f"model {cfg.name} at {model}, size {args.size}, steps {asdict(steps)}", flush=True)
        direct = Direct(model, args, steps)
        senders = requests_for(args.size, steps, cfg.decoder.model.image_size)
        runs: list[RunResult] = []
        with Server(model, args, Path(tmp) / "server.log") as server:
            with httpx.Client(base_url=server.base, timeout=600) as c:  # warm every route once
                for send in senders.values():
                    send(c, 0).raise_for_status()
            paired = paired_latency(server, direct, senders["generation"], args.pairs)
            print("  alternated, one at a time (ms):", {k: round(v * 1000, 1) for k, v in paired.items()}, flush=True)
            for c in levels:
                runs.append(run_level(server, "generation", c, args.duration, [("generation", senders["generation"])]))
                print(f"  c={c}: {runs[-1].images_per_s:.2f} images/s", flush=True)
            if args.mixed_concurrency:
                runs.append(run_level(server, "mixed", args.mixed_concurrency, args.duration, list(senders.items())))
        ceiling = batching_ceiling(direct, args.max_batch)
    gen = {r.concurrency: r for r in runs if r.name == "generation"}
    ratios = {}
    if 1 in gen and len(gen) > 1:
        top = max(gen)
        ratios[f"throughput({top})/throughput(1)"] = gen[top].images_per_s / gen[1].images_per_s
    direct_s = paired["direct"]
    ratios["http latency / direct latency (alternated)"] = paired["http_vs_direct"] / direct_s
    ratios[f"ceiling: direct images/s at batch {args.max_batch} / at batch 1"] = ceiling
    if 1 in gen:
        ratios["http p50 latency at c=1 / direct latency"] = gen[1].p50_s / direct_s
    report(runs, ratios, direct_s)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"model": cfg.name, "size": args.size, "steps": asdict(steps), "device": args.device,
                               "max_batch": args.max_batch, "duration_s": args.duration, "alternated_s": paired,
                               "ratios": ratios, "runs": [asdict(r) for r in runs], "cpu_count": os.cpu_count()},
                              indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
