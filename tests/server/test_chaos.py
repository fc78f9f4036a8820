"""Chaos against real processes: three (then four) replicas of the server on one real
redis-server (append-only file on), reaching it through a TCP proxy the test owns, on
loopback. Each scenario sends its jobs, breaks something, and then checks the ledger:

- every job ends exactly once: completed, or failed with a clear code;
- no job completes twice: each replica logs every job of the global queue that it
  completed (`... completed here`) and every one it ran to the end only to find its claim
  gone (`... its result is dropped`); the logs of all replicas, the killed ones too, name
  each completed job exactly once, and drop results only of jobs the fault stalled;
- no record is lost (404) and none stays unfinished past the scenario's bound.

The scenarios: a replica stopped (SIGSTOP) past its lease and continued; a replica killed
mid-job while synchronous clients wait on it, who retry elsewhere with their
Idempotency-Key; every Redis connection reset, again and again; `url` images far beyond
their bound under a tight `maxmemory`; Redis restarted with the append-only file; Redis
killed without persistence (the one fault that loses jobs: every client still gets an
answer). 200+ jobs in all.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import httpx
import pytest

from server.state.records import FINAL

from .conftest import ServerProc, free_port, wait_ready
from .redis_proc import RedisProc, need_redis
from .tcp_proxy import TcpProxy
from .test_jobs_api import ASYNC

LEASE_S = 2.0
URL_BOUND = 100_000  # each replica's bound on the url images in Redis (bytes)
JOB = {"prompt": "chaos", "size": "32x32", "n": 1, "best_of": 1, "prior_steps": 2, "decoder_steps": 16,
       "upsampler_steps": 2, "response_format": "b64_json"}
CLEAR = {"replica_lost"}  # the failure codes a fault may end a job with
COMPLETED = re.compile(r"job (job_\w+) of the global queue completed here")
DROPPED = re.compile(r"job (job_\w+) ran to completion here after its claim ended")
SETTLE_S = 120.0


@dataclass
class Cluster:
    redis: RedisProc
    proxy: TcpProxy
    env: dict[str, str]
    launch: Callable[..., ServerProc]
    replicas: list[ServerProc] = field(default_factory=list)

    def live(self) -> list[ServerProc]:
        return [r for r in self.replicas if r.proc.poll() is None]

    def client(self, i: int = 0) -> httpx.Client:
        return httpx.Client(base_url=self.live()[i].base_url, timeout=30)

    def completions(self, pattern: re.Pattern = COMPLETED) -> Counter:
        """How many times each job of the global queue completed (or had its result dropped),
        over every replica's log."""
        return Counter(m for r in self.replicas for m in pattern.findall(r.log()))


@pytest.fixture(scope="module")
def cluster(launch_server: Callable[..., ServerProc], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    need_redis()
    aof = tmp_path_factory.mktemp("aof")
    redis_proc = RedisProc(free_port(), aof_dir=aof)
    redis_proc.start()
    proxy = TcpProxy(redis_proc.port)
    env = {"UNCLIP_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0", "UNCLIP_LEASE_S": str(LEASE_S),
           "UNCLIP_MAX_BATCH": "4", "UNCLIP_QUEUE_SIZE": "256", "UNCLIP_URL_STORE_MAX_BYTES": str(URL_BOUND)}
    made = Cluster(redis_proc, proxy, env, launch_server)
    made.replicas = [launch_server(env=env, wait=False) for _ in range(3)]
    for r in made.replicas:
        wait_ready(r)
    yield made
    proxy.close()
    redis_proc.kill()


def send(c: httpx.Client, count: int, **fields: Any) -> list[str]:
    """`count` async generations; their job ids."""
    ids = []
    for i in range(count):
        r = c.post("/v1/images/generations", json={**JOB, "seed": i, **fields}, headers=ASYNC)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def settle(cluster: Cluster, ids: list[str]) -> dict[str, Optional[dict]]:
    """Poll every job (on any live replica) until it ended or SETTLE_S passed: id -> its job
    object (None: its record is gone)."""
    deadline, ended = time.monotonic() + SETTLE_S, {}
    with cluster.client() as c:
        while len(ended) < len(ids) and time.monotonic() < deadline:
            for job_id in ids:
                if job_id in ended:
                    continue
                r = c.get(f"/v1/images/jobs/{job_id}")
                if r.status_code == 404:
                    ended[job_id] = None
                elif r.status_code == 200 and r.json()["status"] in FINAL:
                    ended[job_id] = r.json()
            time.sleep(0.2)
        for job_id in ids:
            if job_id not in ended:
                ended[job_id] = c.get(f"/v1/images/jobs/{job_id}").json()  # stuck: as it stands
    return ended


def check_ledger(cluster: Cluster, ids: list[str], may_drop: frozenset[str] = frozenset()) -> dict[str, dict]:
    """The three promises for these jobs; their final job objects. `may_drop`: the jobs
    whose run the fault may have cut off from its claim."""
    ended, ran, dropped = settle(cluster, ids), cluster.completions(), cluster.completions(DROPPED)
    lost = [i for i in ids if ended[i] is None]
    stuck = [i for i in ids if ended[i] is not None and ended[i]["status"] not in FINAL]
    unclear = [j for j in ended.values() if j and j["status"] in FINAL and j["status"] != "completed"
               and (j["error"] or {}).get("code") not in CLEAR]
    twice = [i for i in ids if ran[i] > 1]
    unrun = [i for i in ids if ended[i] and ended[i]["status"] == "completed" and ran[i] != 1]
    assert (lost, stuck, unclear, twice, unrun) == ([], [], [], [], []), ended
    assert set(dropped) & set(ids) <= may_drop, dropped
    return ended  # type: ignore[return-value]


def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def name_of(replica: ServerProc) -> str:
    """The name a replica gives itself in the records of the jobs it runs (host-pid)."""
    return f"{socket.gethostname()}-{replica.proc.pid}"


def running_on(c: httpx.Client, ids: list[str], replica: ServerProc) -> list[str]:
    """The jobs among `ids` in progress on `replica` now."""
    jobs = (c.get(f"/v1/images/jobs/{j}").json() for j in ids)
    return [j["id"] for j in jobs if j["status"] == "in_progress" and j.get("replica") == name_of(replica)]


def test_a_stalled_replica_writes_nothing_after_its_lease(cluster: Cluster) -> None:
    """SIGSTOP past the lease, until the others reaped its jobs (on a loaded machine that
    can take longer than the lease): they run elsewhere; on SIGCONT it stops them at their
    next step and writes nothing (fencing)."""
    stalled = cluster.replicas[2]
    with cluster.client(0) as c:
        ids = send(c, 40)
        assert until(lambda: bool(running_on(c, ids, stalled)), 30)
        stalled.proc.send_signal(signal.SIGSTOP)
        held = running_on(c, ids, stalled)  # frozen while it is stopped
        time.sleep(LEASE_S)
        reaped = until(lambda: not running_on(c, held, stalled), 60)
        stalled.proc.send_signal(signal.SIGCONT)
        assert reaped, held
    ended = check_ledger(cluster, ids, may_drop=frozenset(held))
    moved = [ended[i] for i in held if ended[i]["status"] == "completed"]
    assert moved and all(j["replica"] != name_of(stalled) for j in moved), held


def test_a_killed_replica_s_jobs_complete_elsewhere_and_sync_clients_retry(cluster: Cluster) -> None:
    """SIGKILL mid-job: its async jobs are reaped and completed by the others; synchronous
    clients that were waiting on it retry on another replica with their Idempotency-Key
    and get the images of the one job each key started."""
    victim = cluster.launch(env=cluster.env)
    cluster.replicas.append(victim)
    before = set(cluster.completions())
    with cluster.client(0) as c:
        ids = send(c, 30)
        keys = [uuid.uuid4().hex for _ in range(10)]

        def sync(i: int) -> tuple[int, str]:
            body, headers = {**JOB, "seed": 100 + i}, {"Idempotency-Key": keys[i]}
            try:
                r = httpx.post(victim.url("/v1/images/generations"), json=body, headers=headers, timeout=60)
            except httpx.HTTPError:
                r = httpx.post(cluster.replicas[0].url("/v1/images/generations"), json=body, headers=headers,
                               timeout=120)
            return r.status_code, r.text

        with ThreadPoolExecutor(10) as pool:
            answers = pool.map(sync, range(10))
            assert until(lambda: bool(running_on(c, ids, victim)), 30)
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            answers = list(answers)
    assert [status for status, _ in answers] == [200] * 10, answers
    check_ledger(cluster, ids)
    new = Counter({k: v for k, v in cluster.completions().items() if k not in before})
    assert sum(new.values()) == len(new) == 40  # 30 async + 10 sync jobs, each run to the end once


def test_reset_connections_lose_nothing(cluster: Cluster) -> None:
    """Every Redis connection of every replica reset every 0.7 s while 40 jobs run."""
    stop = threading.Event()

    def chaos() -> None:
        while not stop.wait(0.7):
            cluster.proxy.drop()

    with cluster.client(1) as c:
        ids = send(c, 40)
        monkey = threading.Thread(target=chaos)
        monkey.start()
        try:
            assert until(lambda: cluster.proxy.drops >= 8, 30)
        finally:
            stop.set()
            monkey.join()
    check_ledger(cluster, ids)


def test_url_images_beyond_their_bound_evict_nothing_else(cluster: Cluster) -> None:
    """Redis at noeviction with little room: 40 jobs of 4 `url` images each, far beyond the
    replicas' bound, push out only the oldest images; every record stays, Redis never
    refuses a write. The jobs are short (2 decoder steps): no fault needs them running."""
    short = {"decoder_steps": 2}
    r = cluster.redis.client()
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", str(used + 8 * 2**20))
    try:
        with cluster.client(0) as c:
            first = send(c, 10, **short)
            ids = first + send(c, 30, n=4, response_format="url", **short)
            ended = check_ledger(cluster, ids)
            assert all(c.get(f"/v1/images/jobs/{j}").status_code == 200 for j in first)  # no record evicted
            kept = int(r.get("unclip:url_bytes"))
            assert 0 < kept <= URL_BOUND
            urls = [d["url"] for j in ids[10:] for d in ended[j]["result"]["data"]]
            found = [httpx.get(u, timeout=10).status_code for u in urls]
            assert found[0] == 404 and 200 in found and set(found) == {200, 404}  # the oldest went first
        assert not any("redis is full" in s.log() for s in cluster.replicas)
    finally:
        r.config_set("maxmemory", "0")


def test_a_redis_restart_with_the_append_only_file_loses_no_job(cluster: Cluster) -> None:
    """Redis restarted (SIGTERM: its append-only file synced) while 40 jobs are queued or
    running: after it, every one completes once."""
    with cluster.client(0) as c:
        ids = send(c, 40)
        assert until(lambda: any(j["status"] == "in_progress" for j in
                                 (c.get(f"/v1/images/jobs/{i}").json() for i in ids[:8])), 30)
    cluster.redis.proc.send_signal(signal.SIGTERM)
    cluster.redis.proc.wait(30)
    cluster.redis.start()
    for r in cluster.live():
        wait_ready(r, timeout=30)
    check_ledger(cluster, ids, may_drop=frozenset(ids))  # had the restart outlasted a lease


def test_a_redis_killed_without_persistence_answers_every_client(cluster: Cluster) -> None:
    """SIGKILL of a Redis without persistence loses what it held: synchronous clients that
    wait get 503 (`job_lost` or `store_unavailable`, retryable) or their images, none
    hangs; then the replicas serve again by themselves."""
    cluster.redis.client().config_set("appendonly", "no")
    cluster.redis.aof_dir = None

    def sync(i: int) -> int:
        body = {**JOB, "seed": i, "decoder_steps": 60}
        r = httpx.post(cluster.replicas[0].url("/v1/images/generations"), json=body, timeout=120)
        assert r.status_code == 200 or (r.status_code == 503 and r.json()["error"]["code"] in
                                        {"job_lost", "store_unavailable"}), r.text
        return r.status_code

    with ThreadPoolExecutor(12) as pool:
        answers = pool.map(sync, range(12))
        time.sleep(1.0)
        cluster.redis.kill()
        cluster.redis.start()
        answers = list(answers)
    assert 503 in answers, answers
    for r in cluster.live():
        wait_ready(r, timeout=30)
    with cluster.client(0) as c:
        check_ledger(cluster, send(c, 10))
