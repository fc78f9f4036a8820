"""The global queue's scripts against a real redis-server: bound and order, claims under
fencing tokens, retried scripts, the reaper failing jobs inside Redis, Redis's clock, the
URL images' bound, idempotency keys, and the refusal of a Redis that may evict."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Iterator

import pytest

from server.state.records import JobRecord
from server.state.redis.idempotency import RedisIdempotency
from server.state.redis.link import PREFIX, RedisLink
from server.state.redis.queue import RedisQueue
from server.state.redis.store import RedisJobStore
from server.state.redis.urls import RedisUrlStore
from server.state.url_store import StoreTooSmall

from .conftest import run
from .redis_proc import RedisProc, running_redis, with_store

LOST = {"message": "lost", "type": "server_error", "param": None, "code": "replica_lost"}


def stores(link: RedisLink, lease_s: float = 0.2, bound: int = 4) -> tuple[RedisJobStore, RedisQueue]:
    return (RedisJobStore(link, ttl_s=60, max_kept=10, pending_ttl_s=120),
            RedisQueue(link, bound=bound, lease_s=lease_s, ttl_s=60, finished_ttl_s=30))


async def queued(store: RedisJobStore, queue: RedisQueue, job_id: str, cost_s: float = 0.0, **fields: Any) -> bool:
    """A job as the API queues it: its record, then its spec."""
    await store.put(JobRecord(job_id, "generation", 0, **fields))
    return (await queue.push(job_id, f"spec-{job_id}", cost_s))[0]


def test_bound_order_claims_leases_and_reaping(redis_server: RedisProc) -> None:
    async def scenario(link: RedisLink) -> None:
        store, one = stores(link, bound=2)
        two = RedisQueue(link, bound=2, lease_s=0.2, ttl_s=60, finished_ttl_s=30)
        assert await queued(store, one, "slow", cost_s=5.0) and await queued(store, two, "quick", cost_s=0.1)
        assert not await queued(store, one, "over")  # the bound is global
        quick, slow = await two.claim(), await one.claim()
        assert (quick.id, quick.spec, slow.id) == ("quick", "spec-quick", "slow")  # earliest virtual finish first
        assert await one.claim() is None and quick.token != slow.token
        assert await one.renew({"slow": slow.token, "quick": slow.token}) == ["quick"]  # not that claim's
        await asyncio.sleep(0.3)
        assert await two.renew({"quick": quick.token}) == ["quick"]  # expired
        requeued, failed = await one.reap(LOST)
        assert sorted(requeued) == ["quick", "slow"] and failed == []
        assert await two.reap(LOST) == ([], [])  # one reaper acts
        again = [await two.claim(), await two.claim()]
        assert sorted(c.id for c in again) == ["quick", "slow"]  # back in front
        assert await two.done("slow", next(c.token for c in again if c.id == "slow"))
        await asyncio.sleep(0.3)
        assert await one.reap(LOST) == ([], ["quick"])  # its second lost claim: it fails
        assert await one.depth() == 0 and not await link.client.exists(link.key("spec", "quick"))

    with_store(redis_server, scenario)


def test_a_reaped_claim_writes_nothing_more(redis_server: RedisProc) -> None:
    """Fencing: once a lease ran out and the job was reaped, the old claim's progress, end,
    events and DONE are refused; the new claim's are taken."""
    async def scenario(link: RedisLink) -> None:
        store, queue = stores(link)
        await queued(store, queue, "j")
        old = await queue.claim()
        record = await store.get("j")
        record.status = "in_progress"
        assert await store.advance(record, "image.job.progress", {"step": 1}, old.token) is not None
        await asyncio.sleep(0.3)
        assert await queue.reap(LOST) == (["j"], [])
        assert await store.advance(record, "image.job.progress", {"step": 2}, old.token) is None  # reaped
        new = await queue.claim()
        assert new.id == "j" and int(new.token) > int(old.token)
        assert await store.append_event("j", "image.job.partial_image", {}, old.token) is None
        ended = JobRecord("j", "generation", 0, status="completed", result={"data": []},
                          expires_at=int(time.time()) + 60)
        assert not await store.put(ended, old.token) and not await queue.done("j", old.token)
        assert await link.client.exists(link.key("lease", "j"))  # the new claim's lease stays
        assert await store.advance(record, "image.job.progress", {"step": 1}, new.token) is not None
        assert await store.put(ended, new.token) and await queue.done("j", new.token)
        assert (await store.get("j")).status == "completed"
        assert [e.data.get("step") for e in await store.events_after("j", 0)] == [1, 1]
        assert await store.put(JobRecord("k", "generation", 0))  # no claim, no fence: any writer

    with_store(redis_server, scenario)


def test_a_claim_that_ran_out_leaves_its_job_to_the_reaper(redis_server: RedisProc) -> None:
    """A replica that stopped a job because its lease ran out (not yet reaped) releases
    nothing: the reaper still finds the job and queues it again. Once a claim's job is
    final, its release drops what is left even without the lease."""
    async def scenario(link: RedisLink) -> None:
        store, queue = stores(link)
        await queued(store, queue, "j")
        claim = await queue.claim()
        await asyncio.sleep(0.3)
        assert not await queue.done("j", claim.token)
        assert await queue.reap(LOST) == (["j"], [])
        again = await queue.claim()
        await store.put(JobRecord("j", "generation", 0, status="completed", expires_at=int(time.time()) + 60),
                        again.token)
        await asyncio.sleep(0.3)  # the lease ran out after the end: the release still cleans up
        assert await queue.done("j", again.token)
        assert await queue.reap(LOST) == ([], []) and not await link.client.exists(link.key("spec", "j"))

    with_store(redis_server, scenario)


def test_retried_scripts_change_nothing_twice(redis_server: RedisProc) -> None:
    """What redis-py's retry after a lost reply does: the same CLAIM (same nonce) returns the
    same job, the same PUSH queues once, the same final PUT is taken again (its writer
    learns it was its own)."""
    async def scenario(link: RedisLink) -> None:
        store, queue = stores(link)
        for job_id in ("a", "b"):
            await queued(store, queue, job_id)
        assert await queue.push("a", "spec-a", 0.0) == (True, 2)  # already queued: still 2 waiting
        nonce = uuid.uuid4().hex
        first = await queue._claim(args=[PREFIX, queue.lease_ms, nonce])
        retried = await queue._claim(args=[PREFIX, queue.lease_ms, nonce])
        assert first[:3] == retried[:3] and first[0] == b"a"  # id, spec, token (the age moved on)
        assert await queue.depth() == 1 and (await queue.claim()).id == "b"
        ended = JobRecord("a", "generation", 0, status="completed", expires_at=int(time.time()) + 60)
        assert await store.put(ended) and await store.put(ended)  # the retry of the final write: taken
        assert not await store.put(JobRecord("a", "generation", 0, status="failed"))  # another end: refused

    with_store(redis_server, scenario)


def test_the_reaper_fails_a_job_inside_redis(redis_server: RedisProc) -> None:
    """After MAX_ATTEMPTS lost claims the record is failed by the script itself (its reply
    may be lost), with its terminal event, and a listed record joins the finished ones."""
    async def scenario(link: RedisLink) -> None:
        store, queue = stores(link)
        await queued(store, queue, "j", owner="o", progress=0.5)
        for _ in range(2):
            assert (await queue.claim()).id == "j"
            await asyncio.sleep(0.3)
            await queue.reap(LOST)
        failed = await store.get("j")
        assert (failed.status, failed.error, failed.progress, failed.owner) == ("failed", LOST, 0.5, "o")
        assert failed.expires_at - failed.completed_at == 30 and abs(failed.completed_at - time.time()) < 5
        assert [e.type for e in await store.events_after("j", 0)] == ["image.job.failed"]
        assert 0 < await link.client.pttl(link.key("job", "j")) <= 30_000
        assert await link.client.zscore(link.key("finished"), "j o") is not None
        assert not await store.put(JobRecord("j", "generation", 0, status="completed"))  # final

    with_store(redis_server, scenario)


def test_queue_time_is_redis_time(redis_server: RedisProc) -> None:
    """A claim's age is measured by Redis's clock, whatever the replica's says."""
    async def scenario(link: RedisLink) -> None:
        store, queue = stores(link)
        await queued(store, queue, "j")
        await asyncio.sleep(0.3)
        age = (await queue.claim()).age_s
        assert 0.25 <= age < 5
        spec_time = int(await link.client.hget(link.key("spec", "j"), "t"))
        seconds, micros = await link.client.time()
        assert abs(seconds * 1000 + micros // 1000 - spec_time - 1000 * age) < 2000

    with_store(redis_server, scenario)


def test_a_claim_skips_jobs_whose_record_ended(redis_server: RedisProc) -> None:
    async def scenario(link: RedisLink) -> None:
        store, queue = stores(link)
        await queued(store, queue, "cancelled")
        await queued(store, queue, "deleted")
        await queued(store, queue, "live")
        await store.put(JobRecord("cancelled", "generation", 0, status="cancelled", expires_at=int(time.time()) + 9))
        await store.delete("deleted")
        assert (await queue.claim()).id == "live"
        assert not await link.client.exists(link.key("spec", "cancelled"), link.key("spec", "deleted"))

    with_store(redis_server, scenario)


def test_tells_listeners_and_places(redis_server: RedisProc) -> None:
    """Queueing (and queueing again) is published on `queued`; a job's place is its rank."""
    async def scenario(link: RedisLink) -> None:
        store, queue = stores(link)
        heard: list[str] = []
        subscribed = asyncio.Event()

        async def on_subscribed() -> None:
            subscribed.set()

        listener = asyncio.create_task(link.listen(link.key("queued"), heard.append, on_subscribed))
        try:
            await asyncio.wait_for(subscribed.wait(), 5)
            await queued(store, queue, "a", cost_s=1.0)
            await queued(store, queue, "b", cost_s=2.0)
            assert await queue.positions(["b", "a", "c"]) == [1, 0, None]
            assert (await queue.claim()).id == "a"
            assert await queue.positions(["b", "a"]) == [0, None]
            await asyncio.sleep(0.3)
            assert await queue.reap(LOST) == (["a"], [])
            for _ in range(50):
                if len(heard) == 3:
                    break
                await asyncio.sleep(0.05)
            assert heard == ["a", "b", "a"]
        finally:
            listener.cancel()

    with_store(redis_server, scenario)


def test_url_images_are_bounded_oldest_first(redis_server: RedisProc) -> None:
    async def scenario(link: RedisLink) -> None:
        store = RedisUrlStore(link, ttl_s=30, max_bytes=250)
        keys = [await store.put(bytes([i]) * 100) for i in range(3)]
        assert await store.get(keys[0]) is None and await store.get(keys[2]) == b"\x02" * 100
        assert await store.size_bytes() == 200
        assert 29 < await store.expires_in(keys[1]) <= 30
        assert await store.get("guess") is None and await store.expires_in("guess") == 0
        with pytest.raises(StoreTooSmall):
            await store.put(b"x" * 251)
        await link.client.flushdb()
        short = RedisUrlStore(link, ttl_s=0.1, max_bytes=250)
        await short.put(b"y" * 200)
        await asyncio.sleep(0.2)
        await short.put(b"z" * 10)  # the expired one is counted out
        assert await short.size_bytes() == 10

    with_store(redis_server, scenario)


def test_idempotency_keys_bind_once_per_owner(redis_server: RedisProc) -> None:
    async def scenario(link: RedisLink) -> None:
        keys = RedisIdempotency(link, ttl_s=60)
        assert await keys.bind("o", "k", "job1", "d1") is None
        assert await keys.bind("o", "k", "job2", "d2") == ("job1", "d1")
        assert await keys.bind("other", "k", "job3", "d1") is None  # another owner's key
        await keys.release("o", "k", "job2")  # not bound to job2: stays
        assert await keys.bind("o", "k", "job4", "d1") == ("job1", "d1")
        await keys.release("o", "k", "job1")
        assert await keys.bind("o", "k", "job5", "d1") is None
        assert 0 < await link.client.pttl(keys._key("o", "k")) <= 60_000

    with_store(redis_server, scenario)


@pytest.fixture(scope="module")
def evicting_redis() -> Iterator[RedisProc]:
    yield from running_redis(args=("--maxmemory", "64mb", "--maxmemory-policy", "volatile-ttl"))


def test_a_redis_that_may_evict_is_refused_until_fixed(evicting_redis: RedisProc) -> None:
    async def main() -> None:
        link = RedisLink(evicting_redis.url())
        try:
            assert not await link.check()
            assert "volatile-ttl" in link.problem and "noeviction" in link.problem
            await link.client.config_set("maxmemory-policy", "noeviction")
            assert await link.check() and link.problem is None
        finally:
            await link.close()

    run(main())


def test_a_full_redis_is_store_unavailable_and_changes_nothing(redis_server: RedisProc) -> None:
    """noeviction at maxmemory: writes are refused (503 store_unavailable), not half-done,
    and the link stays up (reads go on)."""
    async def scenario(link: RedisLink) -> None:
        store, queue = stores(link)
        await queued(store, queue, "j")
        used = int((await link.client.info("memory"))["used_memory"])
        await link.client.config_set("maxmemory", str(used))
        try:
            from server.errors import StoreUnavailable
            with pytest.raises(StoreUnavailable):
                await queued(store, queue, "k")
            assert link.up and await store.get("j") is not None and await store.get("k") is None
            assert await queue.depth() == 1
        finally:
            await link.client.config_set("maxmemory", "0")
        assert (await queue.claim()).id == "j"

    with_store(redis_server, scenario)


def test_records_round_trip_the_reapers_json() -> None:
    """The reaper edits records with Redis's cjson: what it writes reads back as a record."""
    record = JobRecord("j", "generation", 1, owner=None, progress=0.25, result=None, listed=False)
    decoded = json.loads(record.to_json())
    assert JobRecord.from_json(json.dumps({**decoded, "status": "failed", "error": LOST})).error == LOST
