"""The connection to Redis (`UNCLIP_REDIS_URL`) that the shared stores use: one client with
short timeouts, whether Redis answers now (`up`: a PING every CHECK_S; /ready and the
`unclip_store_up` gauge follow it), and `guard()`, which turns a call that finds Redis
unreachable, or is made while it is known to be, into StoreUnavailable (503
`store_unavailable`). A Redis that may evict (server/state/redis/policy.py) counts as
down, with the reason in `problem` and the log, until its policy is fixed; a Redis that
is full refuses writes, which is StoreUnavailable too, without counting it down.

redis-py reconnects by itself: a pooled connection that broke (Redis restarted, the
network dropped) fails its next command, is discarded, and the command is retried once on
a new connection. Nothing here keeps a connection across calls, except the pub/sub
subscriptions (`listen`: cancels, server/state/redis/cancels.py, and queued jobs,
server/claimer.py), which subscribe again when they break.

Pub/sub keeps no message for a replica that is not subscribed at that moment (Redis
restarted, the connection broke), so a listener also hears of each new subscription, to
look for what it may have missed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import StoreUnavailable
from .address import connect
from .policy import eviction_problem, replica_problem

log = logging.getLogger(__name__)

PREFIX = "unclip:"  # every key of this server; give installations sharing one Redis their own database
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0  # longer than any blocking read here (BLOCK_S, server/state/redis/store.py)
CHECK_S = 1.0  # between two PINGs
HEALTH_S = 5.0  # an idle connection (the pub/sub one) is PINGed before use after this long
RETRY_S = 1.0  # between two subscription attempts; also the longest wait for one message
WAIT_MS = 1000  # with `replicas`: the longest a write waits for their acknowledgements
DOWN = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class RedisLink:
    """The client of one Redis (or of the master Sentinel names: server/state/redis/address.py),
    and whether it answers; `on_change(up)` hears every change. `replicas`: how many of its
    replicas must hold each write (`run`) before it counts as made."""

    def __init__(self, url: str, on_change: Callable[[bool], None] = lambda up: None, replicas: int = 0):
        self.client: Redis
        self.client, self._close = connect(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                           socket_timeout=SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 1),
                                           health_check_interval=HEALTH_S)
        self.on_change, self.replicas = on_change, replicas
        self.up = False  # until the first PING answers
        self.problem: Optional[str] = None  # why a Redis that answers is not used (it may evict)
        self._watcher: Optional[asyncio.Task] = None

    @staticmethod
    def key(*parts: str) -> str:
        """This server's key for `parts` ("job", id -> "unclip:job:<id>")."""
        return PREFIX + ":".join(parts)

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Run Redis calls; one that finds Redis unreachable raises StoreUnavailable and
        marks it down. While it is down (until a PING answers, within CHECK_S) calls fail at
        once instead of each waiting for its timeouts."""
        if not self.up:
            raise StoreUnavailable(self.problem or "redis: unreachable at the last check")
        try:
            yield
        except DOWN as err:
            self._set(False)
            raise StoreUnavailable(f"redis: {err}") from err
        except OutOfMemoryError as err:
            log.error("redis is full (maxmemory) and refused a write: %s", err)
            raise StoreUnavailable(f"redis: {err}") from err

    async def run(self, script: AsyncScript, args: list[Any]) -> Any:
        """Run a write script (inside `guard`) and return its answer. With `replicas`, a WAIT
        follows it on the same connection, in the same round trip: the write counts once that
        many replicas hold it (and, the replication stream being one, every write before it),
        so a failover to one of them keeps it. StoreUnavailable when fewer did within WAIT_MS:
        the write may stand, as when an answer is lost, which every caller already allows for."""
        if not self.replicas:
            return await script(args=args)
        async with self.client.pipeline(transaction=False) as pipe:
            await script(args=args, client=pipe)
            pipe.wait(self.replicas, WAIT_MS)
            answer, acknowledged = await pipe.execute()
        if acknowledged < self.replicas:
            raise StoreUnavailable(f"redis: {acknowledged} of the {self.replicas} replicas asked for acknowledged "
                                   f"a write within {WAIT_MS} ms")
        return answer

    async def check(self) -> bool:
        """PING now; whether Redis answered (within SOCKET_TIMEOUT_S) and may be used."""
        try:
            self._set(await asyncio.wait_for(self._usable(), SOCKET_TIMEOUT_S))
        except DOWN:
            self._set(False)
        except Exception:  # noqa: BLE001 - e.g. a wrong password: down, and said why
            log.exception("redis answered the PING with an error")
            self._set(False)
        return self.up

    async def _usable(self) -> bool:
        """PING; whether the Redis may be used: on coming up, that it may not evict; at every
        check with `replicas`, that it has as many in sync."""
        await self.client.ping()
        problem = None if self.up else await eviction_problem(self.client)
        if problem is None and self.replicas:
            problem = await replica_problem(self.client, self.replicas)
        if problem is not None and problem != self.problem:
            log.error("%s", problem)
        self.problem = problem
        return problem is None

    async def start(self) -> None:
        """Check now, then every CHECK_S seconds in the background."""
        if not await self.check():
            log.warning("redis is not reachable yet: /ready answers 503 until it is")
        self._watcher = asyncio.create_task(self._watch(), name="redis-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            await self.check()

    async def listen(self, channel: str, on_message: Callable[[str], None],
                     on_subscribed: Callable[[], Awaitable[None]], every_s: float = math.inf) -> None:
        """Hear `channel`'s messages until cancelled, subscribing again every RETRY_S while
        that fails; `on_subscribed()` runs at each subscription and every `every_s` after it."""
        while True:
            try:
                await self._subscribed(channel, on_message, on_subscribed, every_s)
            except (StoreUnavailable, *DOWN) as err:
                log.debug("subscription to %s lost: %s", channel, err)
            except Exception:  # noqa: BLE001 - listening goes on whatever happened
                log.exception("subscription to %s failed", channel)
            await asyncio.sleep(RETRY_S)

    async def _subscribed(self, channel: str, on_message: Callable[[str], None],
                          on_subscribed: Callable[[], Awaitable[None]], every_s: float) -> None:
        loop = asyncio.get_running_loop()
        async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(channel)
            await on_subscribed()
            checked = loop.time()
            while True:
                message = await pubsub.get_message(timeout=RETRY_S)
                if message is not None and message["type"] == "message":
                    on_message(message["data"].decode())
                if loop.time() - checked >= every_s:
                    await on_subscribed()
                    checked = loop.time()

    async def close(self) -> None:
        """Stop checking and close the connections."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self._close()

    def _set(self, up: bool) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            log.info("redis is reachable")
        else:
            log.warning("redis is unreachable: shared jobs and URL images answer 503 until it is back")
        self.on_change(up)
