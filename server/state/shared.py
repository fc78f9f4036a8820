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
from typing import Callable, Literal, Optional

from ..settings import Settings
from .cancels import CancelBus, LocalCancels
from .records import JobStore, MemoryJobStore
from .redis.cancels import RedisCancels
from .redis.link import RedisLink
from .redis.queue import RedisQueue
from .redis.store import RedisJobStore
from .redis.urls import RedisUrlStore
from .url_store import ImageStore, UrlStore


@dataclass
class SharedState:
    """The three stores of one replica; `link` is the Redis connection behind them, and
    `queue` the global queue, if any."""

    jobs: JobStore
    images: ImageStore
    cancels: CancelBus
    link: Optional[RedisLink] = None
    queue: Optional[RedisQueue] = None

    @property
    def kind(self) -> Literal["memory", "redis"]:
        return "memory" if self.link is None else "redis"

    @property
    def up(self) -> bool:
        """Whether the stores answer now (always, in memory)."""
        return self.link is None or self.link.up

    async def start(self) -> None:
        """Connect (and keep checking the connection)."""
        if self.link is not None:
            await self.link.start()

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()


def shared_state(s: Settings, replica: str, on_change: Callable[[bool], None] = lambda up: None) -> SharedState:
    """The stores the settings ask for (`replica`: this one's name in the global queue's
    leases); `on_change(up)` hears Redis come and go."""
    if s.redis_url is None:
        return SharedState(MemoryJobStore(s.job_ttl_s, s.max_jobs_kept, s.job_store_max_bytes),
                           UrlStore(s.url_ttl_s, s.url_store_max_bytes), LocalCancels())
    link = RedisLink(s.redis_url, on_change)
    # A record not yet finished lasts past its job's longest life, in case its replica dies.
    pending_s = s.max_deadline_s + s.job_ttl_s
    jobs = RedisJobStore(link, s.job_ttl_s, s.max_jobs_kept, pending_ttl_s=pending_s)
    queue = RedisQueue(link, s.queue_size, s.lease_s, pending_s, replica)
    return SharedState(jobs, RedisUrlStore(link, s.url_ttl_s, s.url_store_max_bytes), RedisCancels(link), link, queue)
