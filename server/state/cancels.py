"""Telling the replica that runs an async job to stop it (`CancelBus`): a cancel or delete
may reach any replica, while the engine job behind it runs in one. The record, already
final, says the job is over; the bus only makes its replica stop the work soon.

`LocalCancels` is for one process: a job runs here or nowhere, so there is nobody to tell
(server/state/redis/cancels.py tells every replica through Redis).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol


class CancelBus(Protocol):
    """Cancels heard by every replica. Both methods run on the event loop."""

    async def publish(self, job_id: str) -> None:
        """Ask whichever replica runs job `job_id` to stop it."""

    async def listen(self, on_cancel: Callable[[str], None], reconcile: Callable[[], Awaitable[None]]) -> None:
        """Until cancelled: `on_cancel(job_id)` for each cancel published by any replica, and
        `reconcile()` whenever cancels may have been missed (at each (re)subscription and
        now and then), to check this replica's jobs against their records."""


class LocalCancels:
    """A CancelBus for one process: nothing to publish, nothing to hear."""

    async def publish(self, job_id: str) -> None:
        return None

    async def listen(self, on_cancel: Callable[[str], None], reconcile: Callable[[], Awaitable[None]]) -> None:
        return None
