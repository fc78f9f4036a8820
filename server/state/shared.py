"""What replicas can share, and where it lives: the async jobs' records and events
(`JobStore`), the images of `url` responses (`ImageStore`) and the cancels of jobs that run
on another replica (`CancelBus`). Without `UNCLIP_REDIS_URL` all three are this process's
(today's single-replica server); with it they are in that Redis, so that replicas behind
one Service answer as one.

With Redis the replicas also share one queue (`RedisQueue`, server/state/redis/queue.py): a job
accepted by any replica runs on whichever has a free slot first (server/claimer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .cancels import CancelBus
from .records import JobStore
from .redis.idempotency import RedisIdempotency
from .redis.link import RedisLink
from .redis.queue import RedisQueue
from .url_store import ImageStore


@dataclass
class SharedState:
    """The three stores of one replica; `link` is the Redis connection behind them, `queue`
    the global queue and `idempotency` its idempotency keys, if any."""

    jobs: JobStore
    images: ImageStore
    cancels: CancelBus
    link: Optional[RedisLink] = None
    queue: Optional[RedisQueue] = None
    idempotency: Optional[RedisIdempotency] = None

    @property
    def kind(self) -> Literal["memory", "redis"]:
        return "memory" if self.link is None else "redis"

    @property
    def up(self) -> bool:
        """Whether the stores answer now (always, in memory)."""
        return self.link is None or self.link.up

    @property
    def problem(self) -> Optional[str]:
        """Why a Redis that answers is not used (it may evict, or has too few replicas in sync)."""
        return None if self.link is None else self.link.problem

    async def start(self) -> None:
        """Connect (and keep checking the connection)."""
        if self.link is not None:
            await self.link.start()

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()

