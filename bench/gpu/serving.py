"""The http part: `python -m server` under closed-loop clients at each concurrency
(bench/load.py), its GPU memory polled from /metrics; and the peak memory summary."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import terminate

from .plan import Plan
from .runner import skipped

log = logging.getLogger(__name__)


STOP_S = 10.0  # the server's time to exit once the load is over


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
