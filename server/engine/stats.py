"""What the engine reports about itself, as a small interface with no metrics library.

`server.metrics.Metrics` implements it with Prometheus; tests record it; `NullStats`
drops everything. The engine calls these methods from its own thread (`rejected` from the
submitting thread) and never lets an exception from them reach a job.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence, runtime_checkable

OUTCOMES = ("done", "failed", "cancelled", "expired")
REJECTIONS = ("queue_full", "draining", "stopped")


@runtime_checkable
class EngineStats(Protocol):
    def rejected(self, reason: str) -> None:
        """A submission refused at once: "queue_full", "draining" or "stopped"."""

    def job_started(self, kind: str, queue_wait_s: float) -> None:
        """A job left the queue and started running after waiting queue_wait_s."""

    def job_finished(self, kind: str, outcome: str, seconds: float, images: int) -> None:
        """A job ended (outcome in OUTCOMES) `seconds` after submission with `images` images."""

    def batch(self, stage: str, kinds: Sequence[str], seconds: float, job_ids: Sequence[str]) -> None:
        """One batched model call of `stage`: one kind and one job id per track (sample)."""

    def load(self, queued: int, running: int) -> None:
        """Jobs waiting to start and jobs running, after any change."""

    def gpu_memory(self, allocated: int, reserved: int) -> None:
        """CUDA memory in bytes (reported on CUDA only)."""

    def set_batch_caps(self, caps: Mapping[str, int]) -> None:
        """Each stage's batch cap, once loaded and whenever a calibration changes them."""


class NullStats:
    """Stats that go nowhere."""

    def rejected(self, reason: str) -> None:
        pass

    def job_started(self, kind: str, queue_wait_s: float) -> None:
        pass

    def job_finished(self, kind: str, outcome: str, seconds: float, images: int) -> None:
        pass

    def batch(self, stage: str, kinds: Sequence[str], seconds: float, job_ids: Sequence[str]) -> None:
        pass

    def load(self, queued: int, running: int) -> None:
        pass

    def gpu_memory(self, allocated: int, reserved: int) -> None:
        pass

    def set_batch_caps(self, caps: Mapping[str, int]) -> None:
        pass
