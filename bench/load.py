"""Load test of the HTTP server on the shipped model (or another): closed and open loops,
a burst, and small work sent behind big work.

Starts `python -m server` on 127.0.0.1 (a free port) with --model (default: the shipped
weights/default; `tiny`: a seeded random tiny model written to a temporary directory), its
batch caps measured at start into a fresh profile folder; loads the same model in this
process for the direct references; then runs, with generations at the model's largest size:

- closed loops: clients that each send a request, wait for the answer and send the next,
  for --duration seconds at every concurrency of --concurrency, in --rounds interleaved
  rounds pooled per level (and one mixed run of every operation at --mixed-concurrency);
- a burst: --burst generations sent at once (mean and max latency: processor sharing gives
  mean/max ~ 1, one job after another ~ 0.5);
- open loops: --arrivals Poisson arrivals at 50% and 80% of the capacity the closed loops
  measured (p50/p99), against their c=1 p50 and against a c=1 latency taken just before;
- small behind big: a generation at the smallest size sent 0.5 s after an n=10
  generation at the largest, against the same small generation alone;
- best direct: `run_many` of --burst generations in this process with each stage batched at
  the server's cap (what the engine could reach with no HTTP and no scheduling), measured
  just before and just after each round's highest-concurrency loop (the mean of each loop's
  two is its reference: this machine's speed drifts by tens of % within minutes), and the
  ceiling of batching alone: run_direct at --max-batch images in one batch over one.

Prints the runs and the ratios the engine is held to; writes
bench/results/load-<model>-<time>.json.

    .venv/bin/python -m bench.load [--model weights/default|tiny|DIR] [--duration 20] [--rounds 2]
        [--concurrency 1,4,16] [--burst 16] [--steps 25,8,4] [--max-batch 8] [--device cpu]
    .venv/bin/python -m bench.load --redis   # c=1 latency through Redis / in process
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
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
from typing import Callable, Iterator, Optional, Sequence

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as MetricSample

from bench import terminate, write_result

REPO = Path(__file__).resolve().parents[1]

PROMPTS = ["a red circle above a blue square", "two green triangles", "a yellow star on black", "a purple ring"]


# ---- the server ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_dir(tmp: Path, name: str = "tiny") -> Path:
    """The model directory `name`, or for "tiny" a seeded random tiny model written under tmp."""
    if name != "tiny":
        return Path(name)
    from pipelines.checkpoints import random_stack, save_model_dir
    from pipelines.config import StackConfig

    path = tmp / "tiny"
    save_model_dir(random_stack(StackConfig.tiny(), seed=0), path)
    return path


class Server:
    """`python -m server` as a subprocess, ready on enter, SIGTERM on exit."""

    def __init__(self, model: Path, args: argparse.Namespace, log_path: Path, env: Optional[dict] = None):
        self.port, self.log_path = free_port(), log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "UNCLIP_MODEL_DIR": str(model),
                    "UNCLIP_HOST": "127.0.0.1", "UNCLIP_PORT": str(self.port), "UNCLIP_DEVICE": args.device,
                    "UNCLIP_MAX_BATCH": str(args.max_batch), "UNCLIP_QUEUE_SIZE": str(args.queue_size),
                    "UNCLIP_LOG_LEVEL": "warning", "UNCLIP_API_KEYS": "",
                    "UNCLIP_BATCH_PROFILE": getattr(args, "batch_profile", "measure"),
                    "UNCLIP_BATCH_PROFILE_DIR": str(log_path.parent / "profiles"),
                    "UNCLIP_STAGE_BATCH": getattr(args, "stage_batch", ""),
                    "UNCLIP_DTYPE": getattr(args, "dtype", "auto"), **(env or {})}
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Server":
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        try:
            self._wait_ready(600.0)
        except BaseException:  # not ready, or interrupted: never leave the process behind
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Until /ready is 200 and the batch caps are measured (the server measures them
        while idle after it turns ready: load measured before that would move them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: see {self.log_path}")
            try:
                r = httpx.get(self.base + "/ready", timeout=2)
                if r.status_code == 200 and r.json().get("batch_caps") != "measuring":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout:.0f} s: see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            terminate(self.proc, 60.0)

    def samples(self) -> Iterator[MetricSample]:
        """Every sample of the server's /metrics, as prometheus_client parses them."""
        for family in text_string_to_metric_families(httpx.get(self.base + "/metrics", timeout=10).text):
            yield from family.samples

    def caps(self) -> dict[str, int]:
        """Each stage's batch cap, from /metrics."""
        return {s.labels["stage"]: int(s.value) for s in self.samples() if s.name == "unclip_stage_batch_cap"}

    def seconds_totals(self) -> dict[str, float]:
        """Cumulative seconds from /metrics: in HTTP requests (every route) and in the
        stages' batched model calls."""
        out: dict[str, float] = defaultdict(float)
        for s in self.samples():
            if s.name == "unclip_request_duration_seconds_sum":
                out["request"] += s.value
            elif s.name == "unclip_step_duration_seconds_sum":
                out["steps"] += s.value
        return out

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


def generation_sender(size: int, steps: Steps, n: int = 1) -> Send:
    """Generations of n images at `size`: (client, sequence number) -> response."""
    def generation(c: httpx.Client, i: int) -> httpx.Response:
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "n": n, "seed": i, "size": f"{size}x{size}",
                "response_format": "b64_json", **{k: int(v) for k, v in steps.all_fields().items()}}
        return c.post("/v1/images/generations", json=body)

    return generation


def requests_for(size: int, steps: Steps, in_size: int) -> dict[str, Send]:
    """One sender per operation kind: (client, sequence number) -> response."""
    common = {"size": f"{size}x{size}", "response_format": "b64_json"}
    alpha = np.full((in_size, in_size), 255, np.uint8)
    alpha[:, : in_size // 2] = 0
    images = [png(in_size, s) for s in range(4)]
    masked = png(in_size, 9, alpha)
    generation = generation_sender(size, steps)

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
    in_model_calls: Optional[float] = None  # share of the wall time the engine spent in batched steps
    images_per_s_by_round: list[float] = field(default_factory=list)  # each closed loop's, in order


def timed(c: httpx.Client, kind: str, send: Send, i: int) -> Sample:
    """Send one request and time it until its whole answer is read."""
    t0 = time.monotonic()
    r = send(c, i)
    images = len(r.json().get("data", [])) if r.status_code == 200 else 0
    return Sample(kind, t0, time.monotonic() - t0, r.status_code, images)


def client_loop(base: str, kinds: list[tuple[str, Send]], offset: int, stop_at: float, out: list[Sample]) -> None:
    """One closed-loop client: request, wait, repeat until stop_at (the last one finishes)."""
    with httpx.Client(base_url=base, timeout=600) as c:
        i = 0
        while time.monotonic() < stop_at:
            kind, send = kinds[(offset + i) % len(kinds)]
            out.append(timed(c, kind, send, offset * 100_000 + i))
            i += 1


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Segment:
    """One closed loop against the server: its answers, wall time, and what /metrics counted."""
    samples: list[Sample]
    seconds: float
    counters: dict[str, float]  # deltas of Server.batch_totals
    step_s: float  # seconds the engine spent in batched model calls


def run_segment(server: Server, concurrency: int, duration: float, kinds: list[tuple[str, Send]]) -> Segment:
    """`concurrency` closed-loop clients for `duration` seconds (the last answers awaited)."""
    before, steps_before = server.batch_totals(), server.seconds_totals()["steps"]
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
    return Segment(samples, elapsed, {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after},
                   server.seconds_totals()["steps"] - steps_before)


def run_level(server: Server, name: str, concurrency: int, duration: float, kinds: list[tuple[str, Send]]) -> RunResult:
    """One closed loop, summarized."""
    return summarize(name, concurrency, [run_segment(server, concurrency, duration, kinds)])


def summarize(name: str, concurrency: int, segments: Sequence[Segment]) -> RunResult:
    """The closed loops of one level pooled: images over their summed wall time, latencies
    of all their answers, batch sizes from their summed counters."""
    samples = [s for seg in segments for s in seg.samples]
    elapsed = sum(seg.seconds for seg in segments)
    delta: dict[str, float] = defaultdict(float)
    for seg in segments:
        for k, v in seg.counters.items():
            delta[k] += v
    ok = [s for s in samples if s.status == 200]
    lat = [s.seconds for s in ok]
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
        in_model_calls=sum(seg.step_s for seg in segments) / elapsed,
        images_per_s_by_round=[sum(s.images for s in seg.samples if s.status == 200) / seg.seconds
                               for seg in segments],
    )


# ---- a burst, open loops, small behind big ----------------------------------------------

def at_once(base: str, sends: list[tuple[float, str, Send]], first: int = 0) -> list[Sample]:
    """Send each (delay after start in s, kind, sender) on its own connection at its time;
    every answer timed from its own send."""
    out: list[Sample] = []
    lock = threading.Lock()
    start = time.monotonic()

    def one(k: int, delay: float, kind: str, send: Send) -> None:
        time.sleep(max(0.0, start + delay - time.monotonic()))
        with httpx.Client(base_url=base, timeout=600) as c:
            sample = timed(c, kind, send, first + k)
        with lock:
            out.append(sample)

    threads = [threading.Thread(target=one, args=(k, *item)) for k, item in enumerate(sends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def burst(server: Server, send: Send, n: int) -> dict[str, float]:
    """n generations sent at once: their mean and max latency, and mean / max."""
    lat = [s.seconds for s in at_once(server.base, [(0.0, "generation", send)] * n, 200_000) if s.status == 200]
    return {"n": n, "ok": len(lat), "mean_s": statistics.fmean(lat), "max_s": max(lat),
            "mean_over_max": statistics.fmean(lat) / max(lat)}


def open_loop(server: Server, send: Send, rate: float, arrivals: int, seed: int, service_s: float,
              repeats: int = 3) -> dict[str, float]:
    """`arrivals` Poisson arrivals at `rate` per second (each request on its own connection,
    whatever the ones before it are doing): p50 / p99 latency; for reference, the p50 of the
    same arrivals at an ideal server that runs one job at a time in arrival order, each
    taking `service_s` (the closed loops' c=1 p50): what batching and ordering have to beat;
    and, as a check on the machine's drift since the closed loops, the c=1 latency just
    before (median of `repeats` requests one at a time)."""
    with httpx.Client(base_url=server.base, timeout=600) as c:
        before = statistics.median(timed(c, "c1", send, 350_000 + 10_000 * seed + i).seconds for i in range(repeats))
    times = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, size=arrivals)) - 1.0 / rate
    samples = at_once(server.base, [(float(t), "generation", send) for t in times], 300_000 + 10_000 * seed)
    lat = [s.seconds for s in samples if s.status == 200]
    return {"rate_per_s": rate, "requests": len(samples), "ok": len(lat), "p50_s": percentile(lat, 50),
            "p99_s": percentile(lat, 99), "c1_before_s": before,
            "one_at_a_time_p50_s": percentile(one_at_a_time(times, service_s), 50)}


def one_at_a_time(arrivals: Sequence[float], service_s: float) -> list[float]:
    """Latencies of jobs arriving at `arrivals` (ascending) at a server that runs one at a
    time, first come first served, each for `service_s`."""
    free, out = float("-inf"), []
    for t in arrivals:
        free = max(free, t) + service_s
        out.append(free - t)
    return out


def small_behind_big(server: Server, big: Send, small: Send, repeats: int = 3) -> dict[str, float]:
    """A small generation alone (median of `repeats`), then sent 0.5 s after a big one."""
    with httpx.Client(base_url=server.base, timeout=600) as c:
        alone = statistics.median(timed(c, "small", small, 400_000 + i).seconds for i in range(repeats))
    samples = {s.kind: s for s in at_once(server.base, [(0.0, "big", big), (0.5, "small", small)], 410_000)}
    return {"small_alone_s": alone, "small_behind_big_s": samples["small"].seconds,
            "big_s": samples["big"].seconds, "ratio": samples["small"].seconds / alone}


# ---- through Redis ------------------------------------------------------------------

@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Debian's redis-server on a free loopback port, without persistence; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        yield url
    finally:
        terminate(proc, 5.0)


def redis_overhead(model: Path, args: argparse.Namespace, send: Send, tmp: Path) -> dict[str, float]:
    """Median c=1 latency of the same generation on a server in process and on one with
    UNCLIP_REDIS_URL, sent alternately one at a time (`--pairs` each, after one warm-up).

    Two processes differ in compute speed by a few % from run to run (same model, same
    seeds), which hides what Redis adds. So each server's time outside its model calls
    (request seconds minus step seconds, from /metrics) is measured too: their difference
    is Redis's share, and `net_ratio` is the in-process median plus that share, over it."""
    with redis_server() as url, Server(model, args, tmp / "local.log") as local, \
            Server(model, args, tmp / "redis.log", {"UNCLIP_REDIS_URL": url}) as shared:
        times: dict[str, list[float]] = defaultdict(list)
        servers = {"in_process": local, "redis": shared}
        before: dict[str, dict[str, float]] = {}
        with httpx.Client(base_url=local.base, timeout=600) as a, httpx.Client(base_url=shared.base, timeout=600) as b:
            for i in range(args.pairs + 1):
                for name, c in (("in_process", a), ("redis", b)):
                    sample = timed(c, name, send, 500_000 + i)
                    assert sample.status == 200, sample
                    times[name].append(sample.seconds)
                if i == 0:
                    before = {name: server.seconds_totals() for name, server in servers.items()}
        outside = {}
        for name, server in servers.items():
            after = server.seconds_totals()
            outside[name] = ((after["request"] - before[name]["request"]) - (after["steps"] - before[name]["steps"])
                             ) / args.pairs
    out = {k: statistics.median(v[1:]) for k, v in times.items()}
    added = outside["redis"] - outside["in_process"]
    return {**out, "ratio": out["redis"] / out["in_process"], "outside_model_s": outside, "added_by_redis_s": added,
            "net_ratio": (out["in_process"] + added) / out["in_process"]}


# ---- the direct reference ------------------------------------------------------------

class Direct:
    """The same model in this process, driven by run_direct (the sequential reference)."""

    def __init__(self, model: Path, args: argparse.Namespace, steps: Steps):
        import torch

        from pipelines.checkpoints import dtype_named, load_model_dir
        from pipelines.unclip import Sampling, UnCLIP

        self.cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        device = "cuda" if self.cuda else "cpu"
        self.pipe = UnCLIP(load_model_dir(model, device, dtype_named(args.dtype)).use_channels_last(True))
        self.opts = Sampling(prior_steps=steps.prior, decoder_steps=steps.decoder, upsampler_steps=steps.upsampler)
        self.size = args.size

    def generation(self, i: int, n: int = 1) -> float:
        """Seconds of one generation of n images, as the HTTP generation sender asks for it."""
        return self.many([i], max_batch=n, n=n)

    def many(self, seeds: list[int], max_batch: int, n: int = 1, caps: Optional[dict[str, int]] = None) -> float:
        """Seconds of one generation per seed run together by run_many (each of n images),
        each stage batched up to caps[stage] (default max_batch)."""
        import torch

        from pipelines.operations import generate
        from pipelines.unclip import run_many

        t0 = time.perf_counter()
        ops = [generate(self.pipe, PROMPTS[i % len(PROMPTS)], n=n, seed=i, size=self.size, opts=self.opts)
               for i in seeds]
        run_many(self.pipe, ops, max_batch=max_batch, caps=caps)
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def best(self, caps: dict[str, int], n: int, repeats: int = 2) -> float:
        """Images/s of n generations run together with every stage at its cap (best of repeats)."""
        return n / min(self.many(list(range(n)), max(caps.values()), caps=caps) for _ in range(repeats))


def paired_latency(server: Server, direct: Direct, send: Send, repeats: int) -> dict[str, float]:
    """Median seconds of the same generation over HTTP and by run_direct on this thread,
    alternated one by one (never at the same time) so that drifting machine load hits both
    alike. All of this process's torch work stays on this one thread (see server/engine/core.py
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
    from pipelines.dtypes import DTYPE_NAMES  # no torch here (bench/gpu/ imports torch late)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "weights" / "default"),
                   help="model directory, or 'tiny' for a seeded random tiny model (default: the shipped one)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per closed loop")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the closed loops, pooled per level")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts (generations)")
    p.add_argument("--mixed-concurrency", type=int, default=0, help="clients of the mixed run (0: skip)")
    p.add_argument("--burst", type=int, default=16, help="generations of the burst and of best direct")
    p.add_argument("--open-loop", default="0.5,0.8", help="Poisson arrival rates as fractions of capacity")
    p.add_argument("--arrivals", type=int, default=24, help="requests of each open loop")
    p.add_argument("--steps", default="", help="prior,decoder,upsampler steps (default: the model's)")
    p.add_argument("--size", type=int, default=None, help="output size (default: the model's largest)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument("--batch-profile", default="measure", choices=["measure", "off"], help="the server's caps")
    p.add_argument("--stage-batch", default="", help="the server's UNCLIP_STAGE_BATCH")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=DTYPE_NAMES,
                   help="the networks' dtype, server and direct runs (auto: `default_dtype`)")
    p.add_argument("--pairs", type=int, default=10, help="alternated direct/HTTP generations for the latency ratio")
    p.add_argument("--redis", action="store_true", help="only compare c=1 latency in process and through Redis")
    p.add_argument("--plot", type=Path, default=None, help="also draw the figure (bench/plots.py) to this PNG")
    return p.parse_args()


def parse_steps(text: str) -> Steps:
    parts = [int(x) if x else None for x in text.split(",")] if text else []
    parts += [None] * (3 - len(parts))
    return Steps(*parts[:3])


def report(runs: list[RunResult], extra: dict, ratios: dict[str, float], direct_s: float) -> None:
    print(f"\ndirect run_direct latency (generation, median): {direct_s * 1000:.1f} ms")
    print(f"{'run':<14}{'c':>4}{'req':>6}{'err':>5}{'img/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}")
    for r in runs:
        batch = f"{r.mean_batch:.2f}" if r.mean_batch is not None else "-"
        print(f"{r.name:<14}{r.concurrency:>4}{r.requests:>6}{sum(r.errors.values()):>5}{r.images_per_s:>9.2f}"
              f"{r.p50_s * 1000:>9.1f}{r.p99_s * 1000:>9.1f}{batch:>7}")
        if r.batch_by_stage:
            busy = f"; in model calls {r.in_model_calls:.0%} of the time" if r.in_model_calls is not None else ""
            print(f"{'':<18}mean batch by stage: {({k: round(v, 2) for k, v in r.batch_by_stage.items()})}{busy}")
        if len(r.images_per_s_by_round) > 1:
            print(f"{'':<18}images/s by round: {[round(v, 3) for v in r.images_per_s_by_round]}")
    for r in runs:
        if r.name == "mixed":
            print("mixed p50 by kind (ms):", {k: round(v * 1000, 1) for k, v in r.p50_by_kind.items()},
                  f"mixed-kind batches: {r.mixed_batches:.0f}" if r.mixed_batches is not None else "")
    for name, values in extra.items():
        print(f"{name}: {json.dumps(values, default=lambda v: round(v, 3))}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")


def scenarios(server: Server, direct: Direct, args: argparse.Namespace, steps: Steps, cfg) -> tuple[list, dict]:
    """Every run against the live server, then the direct references: (runs, extra results)."""
    senders = requests_for(args.size, steps, cfg.decoder.model.image_size)
    gen = senders["generation"]
    extra: dict = {"caps": server.caps()}
    with httpx.Client(base_url=server.base, timeout=600) as c:  # warm every route once
        for send in (senders.values() if args.mixed_concurrency else [gen]):
            send(c, 0).raise_for_status()
    extra["alternated_s"] = paired_latency(server, direct, gen, args.pairs)
    print("  alternated, one at a time (ms):", {k: round(v * 1000, 1) for k, v in extra["alternated_s"].items()},
          flush=True)
    runs = closed_loops(server, direct, args, gen, extra)
    if args.mixed_concurrency:
        runs.append(run_level(server, "mixed", args.mixed_concurrency, args.duration, list(senders.items())))
    extra["burst"] = burst(server, gen, args.burst)
    print(f"  burst: {extra['burst']}", flush=True)
    capacity = max(r.images_per_s for r in runs if r.name == "generation")
    c1 = next((r.p50_s for r in runs if r.name == "generation" and r.concurrency == 1), float("nan"))
    for k, frac in enumerate(float(f) for f in args.open_loop.split(",") if f):
        extra[f"open_loop_{round(frac * 100)}"] = open_loop(server, gen, frac * capacity, args.arrivals, k, c1)
        print(f"  open loop {frac:.0%}: {extra[f'open_loop_{round(frac * 100)}']}", flush=True)
    extra["small_behind_big"] = small_behind_big(server, generation_sender(args.size, steps, n=10),
                                                 generation_sender(min(cfg.sizes), steps))
    print(f"  small behind big: {extra['small_behind_big']}", flush=True)
    extra["ceiling"] = batching_ceiling(direct, args.max_batch)
    return runs, extra


def closed_loops(server: Server, direct: Direct, args: argparse.Namespace, gen: Send, extra: dict) -> list[RunResult]:
    """Every concurrency's closed loop, in `--rounds` interleaved rounds (c = 1, 4, 16, 1,
    4, 16, ...) pooled per level, so that the machine's drift hits every level alike; best
    direct measured before and after each round's highest-concurrency loop, its reference
    the mean over rounds of each loop's before and after."""
    levels = [int(c) for c in args.concurrency.split(",") if c]
    segments: dict[int, list[Segment]] = defaultdict(list)
    around: list[float] = []
    for r in range(args.rounds):
        for c in levels:
            if c == max(levels) and not around:
                around.append(direct.best(extra["caps"], args.burst, repeats=1))
            segments[c].append(run_segment(server, c, args.duration, [("generation", gen)]))
            if c == max(levels):
                around.append(direct.best(extra["caps"], args.burst, repeats=1))
            seg = segments[c][-1]
            print(f"  round {r}, c={c}: {sum(s.images for s in seg.samples if s.status == 200) / seg.seconds:.2f}"
                  f" images/s; best direct so far {[round(b, 3) for b in around]}", flush=True)
    extra["best_direct_around_top"] = around
    extra["best_direct_images_per_s"] = statistics.fmean(
        (before + after) / 2 for before, after in zip(around, around[1:]))
    return [summarize("generation", c, segments[c]) for c in levels]


def ratios_of(runs: list[RunResult], extra: dict, max_batch: int) -> dict[str, float]:
    """The ratios the engine is held to (issue 16), from one run."""
    gen = {r.concurrency: r for r in runs if r.name == "generation"}
    direct_s = extra["alternated_s"]["direct"]
    ratios = {"http latency / direct latency (alternated)": extra["alternated_s"]["http_vs_direct"] / direct_s}
    if 1 in gen and len(gen) > 1:
        top = max(gen)
        ratios[f"throughput({top})/throughput(1)"] = gen[top].images_per_s / gen[1].images_per_s
        ratios[f"throughput({top}) / best direct"] = gen[top].images_per_s / extra["best_direct_images_per_s"]
    if 1 in gen:
        ratios["http p50 latency at c=1 / direct latency"] = gen[1].p50_s / direct_s
        for key in (k for k in extra if k.startswith("open_loop_")):
            loop = extra[key]
            ratios[f"open loop {key[10:]}%: p50 / c=1 p50"] = loop["p50_s"] / gen[1].p50_s
            ratios[f"open loop {key[10:]}%: one at a time, ideal: p50 / c=1 p50"] = (
                loop["one_at_a_time_p50_s"] / gen[1].p50_s)
            ratios[f"open loop {key[10:]}%: p50 / c=1 latency just before"] = loop["p50_s"] / loop["c1_before_s"]
    ratios[f"burst of {extra['burst']['n']}: mean / max latency"] = extra["burst"]["mean_over_max"]
    ratios["small behind big / small alone"] = extra["small_behind_big"]["ratio"]
    ratios[f"ceiling: direct images/s at batch {max_batch} / at batch 1"] = extra["ceiling"]
    return ratios


def main() -> int:
    args = parse_args()
    steps = parse_steps(args.steps)
    with tempfile.TemporaryDirectory(prefix="unclip-load-") as tmp:
        model = model_dir(Path(tmp), args.model)
        from pipelines.checkpoints import CONFIG_FILE
        from pipelines.config import StackConfig

        cfg = StackConfig.load(model / CONFIG_FILE)
        args.size = args.size or max(cfg.sizes)
        print(f"model {cfg.name} at {model}, size {args.size}, steps {asdict(steps)}", flush=True)
        if args.redis:
            result = redis_overhead(model, args, generation_sender(args.size, steps), Path(tmp))
            print(f"c=1 latency, median of {args.pairs}: {json.dumps(result)}")
            print(f"wrote {write_result(f'load-redis-{cfg.name}', {'model': cfg.name, 'size': args.size, **result})}")
            return 0
        direct = Direct(model, args, steps)
        with Server(model, args, Path(tmp) / "server.log") as server:
            runs, extra = scenarios(server, direct, args, steps, cfg)
    ratios = ratios_of(runs, extra, args.max_batch)
    report(runs, extra, ratios, extra["alternated_s"]["direct"])
    out = {"model": cfg.name, "size": args.size, "steps": asdict(steps), "device": args.device,
           "max_batch": args.max_batch, "duration_s": args.duration, **extra, "ratios": ratios,
           "runs": [asdict(r) for r in runs], "cpu_count": os.cpu_count()}
    print(f"wrote {write_result(f'load-{cfg.name}', out)}")
    if args.plot:
        from bench.plots import draw

        print(f"wrote {draw(out, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
