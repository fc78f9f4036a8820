"""Running the parts: each one under its time budget (a SIGALRM timer), its section
recorded as ok, skipped or error, and gpu.json rewritten after every part."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .plan import Plan

log = logging.getLogger(__name__)


MIN_PART_S = 10.0  # a part with less time left than this is skipped


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
