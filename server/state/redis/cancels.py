"""A CancelBus through Redis pub/sub (server/state/cancels.py's interface): a cancel is a message
with the job's id on the channel `unclip:cancels`; every replica subscribes, and the one
running the job stops it.

A cancel published while a replica was not subscribed is missed (server/state/redis/link.py
`listen`): at each subscription and every RECONCILE_S after it, the replica checks its own
jobs' records instead (server/jobs/async_jobs.py stops those whose record is final or gone).
"""

from __future__ import annotations

from typing import Awaitable, Callable

from .link import RedisLink

RECONCILE_S = 10.0


class RedisCancels:
    """Cancels published to, and heard from, one Redis channel."""

    def __init__(self, link: RedisLink):
        self.link = link
        self.channel = link.key("cancels")

    async def publish(self, job_id: str) -> None:
        async with self.link.guard():
            await self.link.client.publish(self.channel, job_id)

    async def listen(self, on_cancel: Callable[[str], None], reconcile: Callable[[], Awaitable[None]]) -> None:
        await self.link.listen(self.channel, on_cancel, reconcile, RECONCILE_S)
