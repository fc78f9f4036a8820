"""What Redis must be for the shared state: it may not evict, and with
`UNCLIP_REDIS_REPLICAS` it must have that many replicas in sync. The queue, the leases, the
fencing tokens and the job records are durable state; an evicted lease runs a job twice,
an evicted record answers 404 for a job that runs, an evicted spec hangs its job. So
`maxmemory-policy` must be `noeviction` wherever `maxmemory` is set (Redis's default
policy; `volatile-*` policies evict exactly the keys that expire, records included). The
URL images, the one thing allowed to go first, are bounded by this server instead
(server/state/redis/urls.py), and a Redis that is full refuses writes, which the API
answers 503 `store_unavailable` and retries, and never half-applies (each change is one
script).

`eviction_problem` reads `INFO memory` (managed Redis services often disable `CONFIG`);
the link (server/state/redis/link.py) checks it each time Redis comes up and treats a
Redis that may evict as down, saying why. `replica_problem` reads `INFO replication` at
every check: with fewer replicas in sync than the writes wait for (server/state/redis/link.py
`run`), every write would wait its second and fail, so the Redis counts as down at once.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from redis.asyncio import Redis

SAFE_POLICY = "noeviction"


async def eviction_problem(client: Redis) -> Optional[str]:
    """Why this Redis may evict the shared state (None: it may not)."""
    info = await client.info("memory")
    policy, limit = str(info.get("maxmemory_policy", SAFE_POLICY)), int(info.get("maxmemory", 0) or 0)
    if limit == 0 or policy == SAFE_POLICY:
        return None
    return (f"redis has maxmemory {limit} with maxmemory-policy {policy}: it would evict job records, leases "
            f"and the queue under memory pressure; set maxmemory-policy {SAFE_POLICY} "
            "(docs/deploy.md, 'Several replicas')")


def replicas_in_sync(info: Mapping[str, Any]) -> int:
    """The replicas in sync with a master, from its `INFO replication` (as redis-py parses it)."""
    return sum(1 for key, value in info.items()
               if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online")


async def replica_problem(client: Redis, replicas: int) -> Optional[str]:
    """Why this Redis cannot acknowledge writes with `replicas` replicas (None: it can)."""
    info = await client.info("replication")
    in_sync = replicas_in_sync(info)
    if in_sync >= replicas:
        return None
    return (f"redis ({info.get('role')}) has {in_sync} replicas in sync, and UNCLIP_REDIS_REPLICAS={replicas} "
            "makes every write wait for that many: writes would fail until a replica catches up")
