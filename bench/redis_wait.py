"""What `UNCLIP_REDIS_REPLICAS=1` costs a write: the milliseconds of the server's most
frequent one, an async job's progress report (`RedisJobStore.advance`, one Lua script),
against a master with one replica, without and with the WAIT that follows each write, and
through the sentinel URL (master found by Sentinel) against the master's own address.

    .venv/bin/python -m bench.redis_wait [--writes 2000] [--rounds 5]

Real redis-server processes on loopback (Debian's, `make redis`): a master, its replica
and one sentinel. The settings take turns round by round, so a busy host slows each alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import write_result
from server.state.records import JobRecord
from server.state.redis.link import RedisLink
from server.state.redis.store import RedisJobStore
from tests.server.conftest import free_port
from tests.server.redis_proc import RedisProc, SentinelProc

SETTINGS = {"direct": ("master", 0), "wait 1": ("master", 1), "sentinel": ("sentinel", 0),
            "sentinel, wait 1": ("sentinel", 1)}


async def write_ms(url: str, replicas: int, writes: int) -> float:
    """Mean milliseconds of one progress report, over `writes` of them."""
    link = RedisLink(url, replicas=replicas)
    await link.start()
    store = RedisJobStore(link, 600, 100, 600)
    record = JobRecord(f"bench_{replicas}_{time.monotonic_ns()}", "generation", 0, status="in_progress")
    await store.put(record)
    started = time.perf_counter()
    for step in range(writes):
        await store.advance(record, "image.job.progress", {"step": step})
    spent = time.perf_counter() - started
    await store.delete(record.id)
    await link.close()
    return spent / writes * 1000


def measure(writes: int, rounds: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    master = RedisProc(free_port(), args=("--repl-diskless-sync-delay", "0"))
    master.start()
    replica = RedisProc(free_port(), args=("--replicaof", "127.0.0.1", str(master.port)))
    replica.start()
    sentinel = SentinelProc(free_port(), master.port, root)
    try:
        sentinel.start()
        urls = {"master": master.url(), "sentinel": sentinel.url()}
        times: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(rounds):
            for name, (where, replicas) in SETTINGS.items():
                times[name].append(asyncio.run(write_ms(urls[where], replicas, writes)))
    finally:
        for proc in (sentinel, replica, master):
            proc.kill()
    median = {name: statistics.median(ms) for name, ms in times.items()}
    return {"writes": writes, "rounds": rounds, "ms_per_write": times, "median_ms": median,
            "wait_over_direct": median["wait 1"] / median["direct"],
            "sentinel_over_direct": median["sentinel"] / median["direct"]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_wait", description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = measure(args.writes, args.rounds)
    for name, ms in result["median_ms"].items():
        print(f"{name:>18}: {ms:.3f} ms a write (median of {args.rounds} rounds of {args.writes})")
    print(f"wait 1 / direct: {result['wait_over_direct']:.2f}x; "
          f"sentinel / direct: {result['sentinel_over_direct']:.2f}x")
    print("written", write_result("redis_wait", result))


if __name__ == "__main__":
    main()
