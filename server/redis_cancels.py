"""A CancelBus through Redis pub/sub (server/cancels.py's interface): a cancel is a message
with the job's id on the channel `unclip:cancels`; every replica subscribes, and the one
running the job stops it.

Pub/sub keeps no message for a replica that is not subscribed at that moment (Redis
restarted, the connection broke): at each subscription and every RECONCILE_S after it,
the replica checks its own jobs' records instead (server/async_jobs.py stops those whose
record is final or gone). A lost subscription is made again every RETRY_S until it holds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from .errors import StoreUnavailable
from .redis_link import DOWN, RedisLink

log = logging.getLogger(__name__)

RETRY_S = 1.0  # between two subscription attempts; also the longest wait for one message
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
        while True:
            try:
                await self._subscribed(on_cancel, reconcile)
            except (StoreUnavailable, *DOWN) as err:
                log.debug("cancel subscription lost: %s", err)
            except Exception:  # noqa: BLE001 - listening goes on whatever happened
                log.exception("cancel subscription failed")
            await asyncio.sleep(RETRY_S)

    async def _subscribed(self, on_cancel: Callable[[str], None], reconcile: Callable[[], Awaitable[None]]) -> None:
        """Subscribe, reconcile, then hear cancels (and reconcile every RECONCILE_S) until
        the connection breaks."""
        loop = asyncio.get_running_loop()
        async with self.link.client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(self.channel)
            await reconcile()
            checked = loop.time()
            while True:
                message = await pubsub.get_message(timeout=RETRY_S)
                if message is not None and message["type"] == "message":
                    on_cancel(message["data"].decode())
                if loop.time() - checked >= RECONCILE_S:
                    await reconcile()
                    checked = loop.time()
