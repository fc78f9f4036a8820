"""Several replicas as one service through Redis (UNCLIP_REDIS_URL): a real redis-server on
a free port, the Redis stores alone against it, and two servers, A and B, sharing it with
API keys and one sample per model call. The last test kills Redis and starts it again."""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Optional

import httpx
import pytest
import redis

from server.job_records import JobRecord
from server.redis_link import RedisLink
from server.redis_store import RedisJobStore
from server.redis_urls import RedisUrlStore
from server.url_store import StoreTooSmall

from .conftest import FAST, ServerProc, free_port, open_png, run, wait_ready
from .test_jobs_api import events, submit, wait

REDIS_SERVER = shutil.which("redis-server")
KEYS = ("sk-a", "sk-b")
STORE_DB = 1  # the stores' own tests; the servers use database 0
# Long enough to still run when cancelled, with a progress report at every one of its steps.
LONG = {"prompt": "slow", "size": "32x32", "n": 1, "best_of": 1, "prior_steps": 250, "decoder_steps": 250}


@dataclass
class RedisProc:
    """A redis-server on 127.0.0.1:`port`, without persistence."""

    port: int
    proc: Optional[subprocess.Popen] = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start (exit code {self.proc.poll()})") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, every key lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProc]:
    if REDIS_SERVER is None:
        pytest.skip("no redis-server on the PATH: `make redis` (part of `make test`) installs Debian's")
    server = RedisProc(free_port())
    server.start()
    yield server
    server.kill()


def with_store(redis_server: RedisProc, scenario: Callable[[RedisLink], Awaitable[None]]) -> None:
    """Run `scenario(link)` against an emptied database of its own."""
    async def main() -> None:
        link = RedisLink(redis_server.url(STORE_DB))
        await link.start()
        assert link.up
        await link.client.flushdb()
        try:
            await scenario(link)
        finally:
            await link.close()

    run(main())


def record(job_id: str, owner: Optional[str] = None, status: str = "queued", **fields: Any) -> JobRecord:
    return JobRecord(job_id, "generation", 0, owner=owner, status=status, **fields)


# ---- the stores alone ------------------------------------------------------------------------

def test_redis_store_records_listing_and_final_records(redis_server: RedisProc) -> None:
    async def scenario(link: RedisLink) -> None:
        store = RedisJobStore(link, ttl_s=60, max_kept=10, pending_ttl_s=120)
        for i in range(4):
            assert await store.put(record(f"job{i}", owner="a" if i % 2 else "b", webhook_url="http://h/x"))
        assert await store.get("job1") == record("job1", owner="a", webhook_url="http://h/x")
        assert await store.get("nope") is None
        page, more = await store.list(None, 2)
        assert [r.id for r in page] == ["job3", "job2"] and more
        page, more = await store.list(None, 2, after="job2")
        assert [r.id for r in page] == ["job1", "job0"] and not more
        assert [r.id for r in (await store.list("a", 10))[0]] == ["job3", "job1"]
        with pytest.raises(KeyError):
            await store.list("b", 10, after="job3")  # another owner's
        done = record("job1", owner="a", status="completed", expires_at=int(time.time()) + 60, result={"data": []})
        assert await store.put(done)
        assert not await store.put(record("job1", owner="a", status="cancelled"))  # a final record stays
        assert await store.get("job1") == done
        assert 0 < await link.client.pttl(link.key("job", "job1")) <= 60_000
        assert 60_000 < await link.client.pttl(link.key("job", "job0")) <= 120_000  # not finished
        assert await store.delete("job3") and not await store.delete("job3")
        assert [r.id for r in (await store.list("a", 10))[0]] == ["job1"]

    with_store(redis_server, scenario)


def test_redis_store_events_resume_and_wait(redis_server: RedisProc) -> None:
    async def scenario(link: RedisLink) -> None:
        store = RedisJobStore(link, ttl_s=60, max_kept=10, pending_ttl_s=120)
        assert await store.append_event("a", "image.job.progress", {}) is None  # no record
        await store.put(record("a"))
        for step in (1, 2, 3):
            event = await store.append_event("a", "image.job.progress", {"step": step})
            assert event is not None and event.id == step
        assert [(e.id, e.data["step"]) for e in await store.events_after("a", 1)] == [(2, 2), (3, 3)]
        assert await store.events_after("a", 3) == []
        waiter = asyncio.create_task(store.events_after("a", 3, wait_s=5))
        await asyncio.sleep(0.1)
        await store.append_event("a", "image.job.completed", {"type": "image.job.completed"})
        assert [(e.id, e.type) for e in await asyncio.wait_for(waiter, 3)] == [(4, "image.job.completed")]
        started = time.monotonic()
        assert await store.events_after("a", 4, wait_s=0.3) == [] and time.monotonic() - started < 2
        assert await store.delete("a")
        assert await store.events_after("a", 0, wait_s=5) == []  # gone: at once
        assert not await link.client.exists(link.key("events", "a"))

    with_store(redis_server, scenario)


def test_redis_store_keeps_at_most_max_kept_finished(redis_server: RedisProc) -> None:
    async def scenario(link: RedisLink) -> None:
        store = RedisJobStore(link, ttl_s=60, max_kept=2, pending_ttl_s=120)
        await store.put(record("waiting", owner="a"))
        for i in range(3):
            await store.put(record(f"done{i}", owner="a"))
            await store.append_event(f"done{i}", "image.job.progress", {})
            await store.put(record(f"done{i}", owner="a", status="completed", expires_at=int(time.time()) + 60))
        assert await store.get("done0") is None and not await link.client.exists(link.key("events", "done0"))
        assert [r.id for r in (await store.list("a", 10))[0]] == ["done2", "done1", "waiting"]
        assert await store.get("waiting") is not None  # unfinished records are never evicted

    with_store(redis_server, scenario)


def test_redis_url_store(redis_server: RedisProc) -> None:
    async def scenario(link: RedisLink) -> None:
        store = RedisUrlStore(link, ttl_s=30, max_bytes=100)
        key = await store.put(b"x" * 100)
        assert len(key) >= 32 and await store.get(key) == b"x" * 100
        assert 29 < await store.expires_in(key) <= 30
        assert await store.get("guess") is None and await store.expires_in("guess") == 0
        with pytest.raises(StoreTooSmall):
            await store.put(b"x" * 101)

    with_store(redis_server, scenario)


# ---- two replicas ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(launch_server: Callable[..., ServerProc], redis_server: RedisProc) -> tuple[ServerProc, ServerProc]:
    """Servers A and B on the same Redis, started together."""
    env = {"UNCLIP_REDIS_URL": redis_server.url(), "UNCLIP_API_KEYS": ",".join(KEYS), "UNCLIP_MAX_BATCH": "1"}
    a, b = launch_server(env=env, wait=False), launch_server(env=env, wait=False)
    wait_ready(a)
    wait_ready(b)
    return a, b


@pytest.fixture(scope="module")
def clients(pair: tuple[ServerProc, ServerProc]) -> Iterator[dict[str, httpx.Client]]:
    """"a", "b": key sk-a on A and on B; "b_other": key sk-b on B."""
    a, b = pair
    made = {name: httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
            for name, server, key in (("a", a, "sk-a"), ("b", b, "sk-a"), ("b_other", b, "sk-b"))}
    yield made
    for c in made.values():
        c.close()


def pixels(b64: str) -> bytes:
    """An image's decoded pixels (PNG bytes differ in their metadata only)."""
    image = open_png(base64.b64decode(b64))
    assert image.size == (32, 32)
    return image.tobytes()


def load(server: ServerProc) -> dict:
    return httpx.get(server.url("/ready"), timeout=10).json()


def test_a_job_made_on_a_is_polled_and_fetched_on_b(clients: dict[str, httpx.Client]) -> None:
    a, b = clients["a"], clients["b"]
    job = submit(a, seed=5, response_format="b64_json")
    done = wait(b, job["id"])
    assert done["status"] == "completed" and done["progress"] == 1.0 and done["result"]["data"]
    assert a.get(f"/v1/images/jobs/{job['id']}").json() == done  # the same answer on both
    sync = a.post("/v1/images/generations", json={"prompt": "a red circle", "size": "32x32", **FAST, "seed": 5,
                                                   "response_format": "b64_json"})
    assert sync.status_code == 200 and sync.json().keys() == done["result"].keys()
    assert pixels(done["result"]["data"][0]["b64_json"]) == pixels(sync.json()["data"][0]["b64_json"])
    assert b.get("/v1/images/jobs").json()["data"][0]["id"] == job["id"]  # listed on B, newest first


def test_events_of_a_job_on_a_stream_on_b_and_resume(clients: dict[str, httpx.Client]) -> None:
    a, b = clients["a"], clients["b"]
    job = submit(a, decoder_steps=10)
    with b.stream("GET", f"/v1/images/jobs/{job['id']}/events") as r:  # live, while A runs it
        assert r.status_code == 200
        live = events(r.read().decode())
    assert [e["id"] for e in live] == list(range(1, len(live) + 1)) and live[-1]["event"] == "image.job.completed"
    assert [e["data"]["step"] for e in live if e["data"].get("stage") == "decoder"] == list(range(1, 11))
    replayed = events(a.get(f"/v1/images/jobs/{job['id']}/events").text)
    assert [(e["id"], e["event"]) for e in replayed] == [(e["id"], e["event"]) for e in live]
    middle = len(live) // 2
    rest = events(b.get(f"/v1/images/jobs/{job['id']}/events", headers={"Last-Event-ID": str(middle)}).text)
    assert [e["id"] for e in rest] == [e["id"] for e in live[middle:]]


def soon(check: Callable[[], bool], timeout: float) -> bool:
    """Whether `check()` holds within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def cancel_and_delete_on_b(a: httpx.Client, b: httpx.Client, a_server: ServerProc) -> None:
    """Three long jobs on A (two run, one waits in A's queue); B cancels the waiting one,
    then the running one, and deletes the other: A's engine stops all three."""
    running, other, waiting = (submit(a, LONG)["id"] for _ in range(3))
    assert wait(b, running, lambda j: j["progress"] > 0, 20)["status"] == "in_progress"  # A's progress, on B
    assert (load(a_server)["running"], load(a_server)["queue_depth"]) == (2, 1)
    assert b.post(f"/v1/images/jobs/{waiting}/cancel").json()["status"] == "cancelled"
    assert soon(lambda: load(a_server)["queue_depth"] == 0, 3)  # heard at once, not at a reconciliation

    stopped = b.post(f"/v1/images/jobs/{running}/cancel")
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled", stopped.text
    assert b.delete(f"/v1/images/jobs/{other}").json() == {"id": other, "object": "image.job.deleted",
                                                           "deleted": True}
    assert a.get(f"/v1/images/jobs/{other}").status_code == 404
    assert soon(lambda: load(a_server)["running"] == 0, 15)
    assert a.get(f"/v1/images/jobs/{running}").json() == stopped.json()  # A's own end did not overwrite it
    assert events(a.get(f"/v1/images/jobs/{running}/events").text)[-1]["event"] == "image.job.cancelled"


def test_cancel_and_delete_on_b_stop_the_jobs_on_a(clients: dict[str, httpx.Client],
                                                   pair: tuple[ServerProc, ServerProc]) -> None:
    cancel_and_delete_on_b(clients["a"], clients["b"], pair[0])


def test_openai_client_url_made_on_a_is_served_by_b(pair: tuple[ServerProc, ServerProc]) -> None:
    a, b = pair
    made = a.client(api_key="sk-a").images.generate(model="dall-e-2", prompt="a red circle", size="32x32",
                                                    response_format="url", extra_body=FAST)
    url = made.data[0].url
    assert url.startswith(a.base_url + "/v1/files/images/")
    from_b = httpx.get(b.base_url + url.removeprefix(a.base_url))
    assert from_b.status_code == 200 and from_b.headers["content-type"] == "image/png"
    assert from_b.content == httpx.get(url).content and open_png(from_b.content).size == (32, 32)


def test_another_keys_job_does_not_exist_on_b(clients: dict[str, httpx.Client]) -> None:
    job_id = submit(clients["a"])["id"]
    other = clients["b_other"]
    for r in (other.get(f"/v1/images/jobs/{job_id}"), other.get(f"/v1/images/jobs/{job_id}/events"),
              other.post(f"/v1/images/jobs/{job_id}/cancel"), other.delete(f"/v1/images/jobs/{job_id}")):
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert job_id not in [j["id"] for j in other.get("/v1/images/jobs", params={"limit": 100}).json()["data"]]
    assert wait(clients["b"], job_id)["status"] == "completed"  # its own key sees it on B


def test_redis_down_is_503_and_recovers(clients: dict[str, httpx.Client], pair: tuple[ServerProc, ServerProc],
                                        redis_server: RedisProc) -> None:
    a, b = clients["a"], clients["b"]
    job_id = wait(a, submit(a)["id"])["id"]
    redis_server.kill()
    assert soon(lambda: httpx.get(pair[0].url("/ready"), timeout=10).status_code == 503, 5)
    assert httpx.get(pair[0].url("/ready"), timeout=10).json()["store_up"] is False
    r = a.get(f"/v1/images/jobs/{job_id}")
    assert r.status_code == 503 and r.headers["retry-after"], r.text
    assert r.json()["error"]["code"] == "store_unavailable" and r.json()["error"]["type"] == "server_error"
    refused = a.post("/v1/images/generations", json={"prompt": "x", "size": "32x32", **FAST})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
    assert httpx.get(pair[0].url("/health")).status_code == 200  # alive: not restarted
    assert "unclip_store_up 0.0" in httpx.get(pair[0].url("/metrics")).text

    redis_server.start()
    for server in pair:
        wait_ready(server, timeout=20)
    assert "unclip_store_up 1.0" in httpx.get(pair[0].url("/metrics")).text
    again = wait(b, submit(a)["id"])
    assert again["status"] == "completed", again
    cancel_and_delete_on_b(a, b, pair[0])  # A listens for cancels again
