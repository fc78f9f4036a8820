"""Redis behind Sentinel (`redis+sentinel://`), and writes that wait for replicas
(`UNCLIP_REDIS_REPLICAS`): real redis-server processes on loopback, a master with two
replicas and one sentinel, and a master killed (SIGKILL) under load. After the failover
the replicas of the server follow the promoted replica by themselves, and no accepted job
or acknowledged write is lost."""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from server.errors import StoreUnavailable
from server.settings import Settings
from server.state.records import JobRecord
from server.state.redis.address import SentinelAddress, parse_sentinel_url
from server.state.redis.link import WAIT_MS, RedisLink
from server.state.redis.policy import replicas_in_sync
from server.state.redis.store import RedisJobStore

from .conftest import ServerProc, free_port, run, wait_ready
from .redis_proc import STORE_DB, RedisProc, SentinelProc, need_redis
from .test_chaos import JOB, Cluster, check_ledger, send, until
from .test_jobs_api import ASYNC


class SentinelSet:
    """A master, its replicas and a sentinel, all killed at the end."""

    def __init__(self, root: Path, replicas: int = 2):
        need_redis()
        quick = ("--repl-diskless-sync-delay", "0")  # a replica's first sync at once, not after 5 s
        self.master = RedisProc(free_port(), args=quick)
        self.master.start()
        self.replicas = [RedisProc(free_port(), args=(*quick, "--replicaof", "127.0.0.1", str(self.master.port)))
                         for _ in range(replicas)]
        for r in self.replicas:
            r.start()
        assert until(lambda: self.online() == replicas, 20), self.master.client().info("replication")
        self.sentinel = SentinelProc(free_port(), self.master.port, root)
        self.sentinel.start()

    def online(self) -> int:
        """The master's replicas in sync with it."""
        return replicas_in_sync(self.master.client().info("replication"))

    def fail_over(self, timeout: float = 30.0) -> RedisProc:
        """SIGKILL the master; wait for Sentinel to promote a replica; the new master."""
        old = self.master
        old.kill()
        assert until(lambda: self.sentinel.master() not in (None, old.port), timeout), "no failover"
        self.master = next(r for r in self.replicas if r.port == self.sentinel.master())
        self.replicas.remove(self.master)
        assert self.master.client().info("replication")["role"] == "master"
        return self.master

    def close(self) -> None:
        for proc in (self.sentinel, self.master, *self.replicas):
            proc.kill()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    made = SentinelSet(tmp_path)
    yield made
    made.close()


def test_sentinel_urls_parse_or_say_what_is_wrong() -> None:
    assert parse_sentinel_url("redis+sentinel://:pw@h1:26380,h2,[::1]:5/mymaster/1?sentinel_password=s") == \
        SentinelAddress((("h1", 26380), ("h2", 26379), ("::1", 5)), "mymaster", 1, None, "pw", None, "s", False)
    assert parse_sentinel_url("rediss+sentinel://u:p%40ss@h/svc").password == "p@ss"
    bad = {"redis+sentinel://h": "names the service", "redis+sentinel://h:x/m": "host:port",
           "redis+sentinel://h/m/x": "is a number", "redis+sentinel://h/m?db=1": "unknown options ['db']"}
    for url, says in bad.items():
        with pytest.raises(ValueError, match=says.replace("[", r"\[")):
            parse_sentinel_url(url)
    with pytest.raises(ValueError, match="redis_url(.|\n)*is a number"):
        Settings(redis_url="redis+sentinel://h/m/x")
    assert Settings(redis_url=" redis+sentinel://h/m ").redis_url == "redis+sentinel://h/m"


def test_too_few_replicas_in_sync_make_redis_unusable(redis_server: RedisProc) -> None:
    """replicas=1 on a Redis without replicas: every write would wait its second and fail,
    so the link counts it as down at once and says why (/ready's `store_problem`)."""
    async def scenario() -> None:
        link = RedisLink(redis_server.url(STORE_DB), replicas=1)
        await link.start()
        assert not link.up and "0 replicas in sync" in link.problem
        with pytest.raises(StoreUnavailable, match="0 replicas in sync"):
            await RedisJobStore(link, 60, 10, 60).put(JobRecord("j", "generation", 0))
        await link.close()
    run(scenario())


def test_a_write_no_replica_acknowledges_fails_clearly(sentinel_set: SentinelSet) -> None:
    """replicas=2, and one replica stalled (SIGSTOP; the master still counts it in sync): a
    write waits WAIT_MS and fails as StoreUnavailable (503 store_unavailable), not taken as
    made, without marking Redis down; once the replica goes on, writes count again."""
    stalled = sentinel_set.replicas[0]

    async def scenario() -> None:
        link = RedisLink(sentinel_set.master.url(), replicas=2)
        await link.start()
        store = RedisJobStore(link, 60, 10, 60)
        assert await store.put(JobRecord("before", "generation", 0))
        stalled.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="1 of the 2 replicas"):
                await store.put(JobRecord("stalled", "generation", 0))
            assert time.monotonic() - started >= WAIT_MS / 1000 * 0.9
            assert link.up
        finally:
            stalled.proc.send_signal(signal.SIGCONT)
        assert await store.put(JobRecord("after", "generation", 0))
        await link.close()
    run(scenario())


def test_the_link_follows_a_failover_and_keeps_acknowledged_writes(sentinel_set: SentinelSet) -> None:
    """Records written with replicas=1 through the sentinel URL; the master killed: the
    link comes back by itself on the promoted replica, where every record is."""
    async def scenario() -> None:
        changes: list[bool] = []
        link = RedisLink(sentinel_set.sentinel.url(), changes.append, replicas=1)
        await link.start()
        assert link.up, link.problem
        store = RedisJobStore(link, 600, 1000, 600)
        ids = [f"job_{i}" for i in range(50)]
        for job_id in ids:
            assert await store.put(JobRecord(job_id, "generation", 0))
        old = sentinel_set.master.port
        new = await asyncio.to_thread(sentinel_set.fail_over)
        assert new.port != old
        deadline = time.monotonic() + 30
        while not (await link.check() and await _writes(store)):
            assert time.monotonic() < deadline, "the link did not come back"
            await asyncio.sleep(0.2)
        assert False in changes and changes[-1] is True  # it went down, and came back
        assert [job_id for job_id in ids if await store.get(job_id) is None] == []
        assert new.client().hget(link.key("job", "after"), "r") is not None  # written to the new master
        await link.close()
    run(scenario())


async def _writes(store: RedisJobStore) -> bool:
    try:
        return await store.put(JobRecord("after", "generation", 0))
    except StoreUnavailable:
        return False


@pytest.mark.slow
def test_replicas_lose_no_job_when_redis_fails_over(sentinel_set: SentinelSet,
                                                   launch_server: Callable[..., ServerProc]) -> None:
    """Two replicas of the server on the sentinel URL with UNCLIP_REDIS_REPLICAS=1, 30
    async jobs queued or running and 6 synchronous clients waiting, and the Redis master
    SIGKILLed: the replicas serve again on the promoted Redis by themselves, every waiting
    client gets its images, and every job completes exactly once (the ledger of
    tests/server/test_chaos.py)."""
    env = {"UNCLIP_REDIS_URL": sentinel_set.sentinel.url(), "UNCLIP_REDIS_REPLICAS": "1", "UNCLIP_LEASE_S": "2",
           "UNCLIP_MAX_BATCH": "4", "UNCLIP_QUEUE_SIZE": "64"}
    cluster = Cluster(sentinel_set.master, None, env, launch_server)  # type: ignore[arg-type]
    cluster.replicas = [launch_server(env=env, wait=False) for _ in range(2)]
    try:
        for r in cluster.replicas:
            wait_ready(r)
        with cluster.client(0) as c:
            ids = send(c, 30)
            assert until(lambda: any(c.get(f"/v1/images/jobs/{i}").json()["status"] == "in_progress"
                                     for i in ids[:6]), 30)
        with ThreadPoolExecutor(6) as pool:  # synchronous clients waiting through the failover
            waiting = [pool.submit(httpx.post, cluster.replicas[i % 2].url("/v1/images/generations"),
                                   json={**JOB, "seed": 100 + i}, timeout=120) for i in range(6)]
            # each waiting client's job queued before the kill: a request that comes while Redis
            # fails over is refused (503 store_unavailable, with Retry-After), and is not the point
            assert until(lambda: len(job_ids(sentinel_set.master, "spec") - set(ids))
                         + sum(w.done() for w in waiting) >= 6, 30)
            sentinel_set.fail_over()
            answers = [w.result() for w in waiting]
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers if a.status_code != 200]
        for r in cluster.replicas:
            wait_ready(r, timeout=60)
        check_ledger(cluster, ids, may_drop=frozenset(ids))  # a failover may outlast a lease
        assert all("redis is unreachable" in r.log() for r in cluster.replicas)
    finally:
        for r in cluster.replicas:
            r.stop()


def job_ids(redis_proc: RedisProc, kind: str) -> set[str]:
    """The ids of the jobs that have a `kind` key in this Redis: "job", their records;
    "spec", those in the global queue, waiting or running."""
    prefix = RedisLink.key(kind, "")
    return {key.decode()[len(prefix):] for key in redis_proc.client().scan_iter(match=prefix + "*", count=1000)}


def test_ready_says_why_a_redis_that_answers_is_not_used(redis_server: RedisProc,
                                                         launch_server: Callable[..., ServerProc]) -> None:
    """UNCLIP_REDIS_REPLICAS=1 against a Redis without replicas: /ready is 503 and its
    `store_problem` says why, while /health stays 200."""
    server = launch_server(env={"UNCLIP_REDIS_URL": redis_server.url(), "UNCLIP_REDIS_REPLICAS": "1"}, wait=False)
    try:
        wait_ready(server, path="/health")
        assert until(lambda: "store_problem" in httpx.get(server.url("/ready"), timeout=5).json(), 120)
        r = httpx.get(server.url("/ready"), timeout=5)
        assert r.status_code == 503 and r.json()["store_up"] is False
        assert "0 replicas in sync" in r.json()["store_problem"], r.json()
    finally:
        server.stop()


def test_a_request_refused_while_queueing_leaves_nothing_behind(sentinel_set: SentinelSet,
                                                                launch_server: Callable[..., ServerProc]) -> None:
    """UNCLIP_REDIS_REPLICAS=2 and one replica stalled (SIGSTOP): the job's record lands on
    the master but no write is acknowledged, so the request gets 503 store_unavailable
    before its job is queued. Once the replica goes on, that record is gone (the listing
    shows no job queued for ever), and a retry with the same Idempotency-Key starts anew
    and gets its images instead of waiting on a job that never runs."""
    server = launch_server(env={"UNCLIP_REDIS_URL": sentinel_set.master.url(), "UNCLIP_REDIS_REPLICAS": "2"})
    stalled, keyed = sentinel_set.replicas[0], {"Idempotency-Key": "refused-then-retried"}
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        stalled.proc.send_signal(signal.SIGSTOP)
        try:
            refused = [c.post("/v1/images/generations", json={**JOB, "seed": 1}, headers=ASYNC),
                       c.post("/v1/images/generations", json={**JOB, "seed": 2}, headers=keyed)]
        finally:
            stalled.proc.send_signal(signal.SIGCONT)
        assert [(r.status_code, r.json()["error"]["code"]) for r in refused] == [(503, "store_unavailable")] * 2
        assert until(lambda: not job_ids(sentinel_set.master, "job"), 10), c.get("/v1/images/jobs").json()
        assert c.get("/v1/images/jobs").json()["data"] == []
        retried = c.post("/v1/images/generations", json={**JOB, "seed": 2}, headers=keyed)
        assert retried.status_code == 200 and retried.json()["data"][0]["b64_json"], retried.text
