"""The async jobs' store (bounds, expiry, listing, events), a lost claim's follower, and
webhooks (signature, allow-list, retries), in process."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Optional

import httpx
import pytest

from server.engine.job import Job
from server.errors import APIError, StoreUnavailable
from server.jobs.async_jobs import AsyncJobs
from server.jobs.webhooks import WebhookSender, check_url, new_secret, parse_hosts, secret_key, sign
from server.state.records import EVENT_PREFIX, JobRecord, JobStore, MemoryJobStore

from .conftest import run


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(job_id: str, owner: Optional[str] = None, status: str = "queued", expires_at: Optional[int] = None,
           result: Optional[dict] = None) -> JobRecord:
    return JobRecord(job_id, "generation", 0, owner=owner, status=status, expires_at=expires_at, result=result)


# ---- the store ---------------------------------------------------------------------------

def test_finished_records_expire_and_unfinished_stay() -> None:
    clock = Clock()
    store = MemoryJobStore(ttl_s=60, max_kept=10, max_bytes=10**6, clock=clock)

    async def scenario() -> None:
        await store.put(record("running"))
        await store.put(record("done", status="completed", expires_at=1060))
        clock.now = 1059
        assert await store.get("done") is not None
        clock.now = 1060
        assert await store.get("done") is None and await store.get("running") is not None

    run(scenario())


def test_the_oldest_finished_go_beyond_the_count_or_bytes() -> None:
    store = MemoryJobStore(ttl_s=60, max_kept=2, max_bytes=3000)

    async def scenario() -> None:
        await store.put(record("waiting"))
        for i in range(3):
            await store.put(record(f"j{i}", status="completed"))
        assert await store.get("j0") is None and await store.get("j1") and await store.get("j2")
        await store.put(record("big", status="completed", result={"b64": "x" * 2500}))  # by count
        assert await store.get("j1") is None and await store.get("j2") and await store.get("big")
        await store.put(record("bigger", status="completed", result={"b64": "x" * 3500}))  # by bytes
        assert await store.get("j2") is None and await store.get("big") is None
        assert await store.get("bigger") and await store.get("waiting")  # the newest and unfinished stay
        assert 3500 < store.size_bytes < 3600

    run(scenario())


def test_records_are_copies() -> None:
    store = MemoryJobStore(ttl_s=60, max_kept=2, max_bytes=3000)

    async def scenario() -> None:
        r = record("a")
        await store.put(r)
        r.status = "failed"
        got = await store.get("a")
        got.progress = 0.5
        assert (await store.get("a")).status == "queued" and (await store.get("a")).progress == 0.0

    run(scenario())


def test_a_final_record_never_changes() -> None:
    store = MemoryJobStore(ttl_s=60, max_kept=2, max_bytes=3000)

    async def scenario() -> None:
        assert await store.put(record("a")) and await store.put(record("a", status="in_progress"))
        assert await store.put(record("a", status="completed", result={"data": []}))
        assert not await store.put(record("a", status="cancelled"))  # e.g. another replica's late cancel
        assert (await store.get("a")).status == "completed"

    run(scenario())


def test_list_newest_first_by_owner_with_cursor() -> None:
    store = MemoryJobStore(ttl_s=60, max_kept=10, max_bytes=10**6)

    async def scenario() -> None:
        for i in range(5):
            await store.put(record(f"j{i}", owner="me" if i % 2 == 0 else "you"))
        page, more = await store.list("me", 2)
        assert [r.id for r in page] == ["j4", "j2"] and more
        page, more = await store.list("me", 2, after="j2")
        assert [r.id for r in page] == ["j0"] and not more
        assert [r.id for r in (await store.list(None, 10))[0]] == ["j4", "j3", "j2", "j1", "j0"]
        with pytest.raises(KeyError):
            await store.list("me", 2, after="nope")

    run(scenario())


def test_events_are_numbered_and_waited_for() -> None:
    store = MemoryJobStore(ttl_s=60, max_kept=10, max_bytes=10**6)

    async def scenario() -> None:
        await store.put(record("a"))
        assert (await store.append_event("a", "image.job.progress", {"step": 1})).id == 1
        assert [e.id for e in await store.events_after("a", 0)] == [1]
        assert await store.events_after("a", 1, wait_s=0.05) == []  # timed out
        waiter = asyncio.create_task(store.events_after("a", 1, wait_s=5))
        await asyncio.sleep(0.01)
        await store.append_event("a", "image.job.completed", {})
        assert [(e.id, e.type) for e in await asyncio.wait_for(waiter, 1)] == [(2, "image.job.completed")]
        waiter = asyncio.create_task(store.events_after("a", 2, wait_s=5))
        await asyncio.sleep(0.01)
        assert await store.delete("a") and await asyncio.wait_for(waiter, 1) == []  # deleting wakes waiters
        assert await store.append_event("a", "x", {}) is None and not await store.delete("a")

    run(scenario())


async def check_advance(store: JobStore) -> None:
    """`advance` (a progress report) changes the record and appends its event as one change,
    once however often it is retried, and changes nothing once the record is final or gone
    (either store)."""
    job = record("a")
    assert await store.advance(job, "image.job.progress", {"step": 1}) is None  # no record yet
    await store.put(job)
    job.status, job.progress = "in_progress", 0.25
    event = await store.advance(job, "image.job.progress", {"step": 1})
    assert event is not None and (event.id, event.data) == (1, {"step": 1})
    kept = await store.get("a")
    assert (kept.status, kept.progress) == ("in_progress", 0.25)
    retried = await store.advance(job, "image.job.progress", {"step": 1})  # its answer was lost
    assert retried is not None and retried.id == 1 and [e.id for e in await store.events_after("a", 0)] == [1]
    assert await store.put(record("a", status="cancelled", expires_at=int(time.time()) + 60))
    job.progress = 0.5
    assert await store.advance(job, "image.job.progress", {"step": 2}) is None  # cancelled meanwhile
    assert (await store.get("a")).status == "cancelled"
    assert [e.id for e in await store.events_after("a", 0)] == [1]
    await store.delete("a")
    assert await store.advance(job, "image.job.progress", {"step": 3}) is None


def test_advance_is_refused_once_final_or_gone() -> None:
    run(check_advance(MemoryJobStore(ttl_s=60, max_kept=10, max_bytes=10**6)))


def test_a_lost_claim_writes_nothing_and_is_forgotten_when_its_follower_ends() -> None:
    """A follower of an abandoned job writes no end; whether it settles or dies first, the
    job leaves nothing behind in AsyncJobs."""
    store = MemoryJobStore(ttl_s=60, max_kept=10, max_bytes=10**6)
    jobs = AsyncJobs(store, ttl_s=60)
    cancelled: list[str] = []

    async def follower(job_id: str, settles: bool) -> None:
        await asyncio.sleep(0.01)
        if not settles:
            raise RuntimeError("the follower died")
        assert not await jobs.settle(job_id, "completed", result={"data": []})

    async def scenario() -> None:
        for job_id, settles in (("settles", True), ("dies", False)):
            await store.put(record(job_id, status="in_progress"))
            job = Job(iter(()), "generation", 60, None, lambda j: cancelled.append(j.id), job_id=job_id)
            job.state = "running"
            jobs.adopt(await store.get(job_id), job, follower(job_id, settles), fence="1")
            jobs.abandon(job_id)
        await asyncio.gather(*jobs._tasks, return_exceptions=True)
        assert cancelled == ["settles", "dies"]
        assert [(await store.get(j)).status for j in ("settles", "dies")] == ["in_progress", "in_progress"]
        assert not jobs._abandoned and not jobs._engine_jobs and not jobs._tasks

    run(scenario())


class AnswerLost(MemoryJobStore):
    """The first write that ends a record lands, but its answer is lost, as when Redis's
    connection resets after the script ran and redis-py's one retry fails too."""

    lost = 0

    async def put(self, record: JobRecord, fence: Optional[str] = None) -> bool:
        made = await super().put(record, fence)
        if record.finished and not self.lost:
            self.lost += 1
            raise StoreUnavailable("redis: Connection reset by peer")
        return made


def test_an_end_whose_answer_was_lost_is_still_the_follower_s() -> None:
    """The follower's retry finds its own end landed: the job counts as ended by it (not
    "ran to completion after its claim ended"), with its terminal event and its announce
    (webhook, metrics) once."""
    store, ended = AnswerLost(ttl_s=60, max_kept=10, max_bytes=10**6), []
    jobs = AsyncJobs(store, ttl_s=60, on_end=lambda kind, status: ended.append(status))

    async def scenario() -> None:
        await store.put(record("j", status="in_progress"))
        assert await jobs.settle("j", "completed", result={"data": [{"b64_json": "x"}]})
        assert store.lost == 1 and (await store.get("j")).status == "completed"
        assert [e.type for e in await store.events_after("j", 0)] == [f"{EVENT_PREFIX}.completed"]
        assert ended == ["completed"]
        assert not await jobs.settle("j", "cancelled")  # another end finds it final: not this one's

    run(scenario())


# ---- webhooks ------------------------------------------------------------------------------

def test_signature_matches_the_reference_library_vector() -> None:
    # The vector of the Standard Webhooks Python library's own tests (test_sign_function).
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!",
                                    "whsec_" + base64.b64encode(bytes(16)).decode()])
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        secret_key(secret)
    assert len(secret_key(new_secret())) == 32


@pytest.mark.parametrize("url, code", [
    ("https://hooks.example.com/x", None), ("http://[::1]:9/x", None), ("https://HOOKS.example.com/x", None),
    ("https://evil.example.com/x", "webhook_host_not_allowed"),
    ("https://hooks.example.com@evil.example.com/x", "invalid_value"),
    ("https://u:p@hooks.example.com/x", "invalid_value"), ("file:///etc/passwd", "invalid_value"),
    ("hooks.example.com/x", "invalid_value"), ("http://", "invalid_value"),
])
def test_check_url(url: str, code: Optional[str]) -> None:
    hosts = parse_hosts("hooks.example.com, [::1]")
    if code is None:
        assert check_url(url, hosts) == url
        return
    with pytest.raises(APIError) as info:
        check_url(url, hosts)
    assert info.value.status == 400 and info.value.param == "webhook_url" and info.value.code == code


def test_no_allowed_host_refuses_every_url() -> None:
    with pytest.raises(APIError) as info:
        check_url("https://hooks.example.com/x", parse_hosts(""))
    assert info.value.code == "webhooks_disabled"


def deliveries(answers: list[httpx.Response], attempts: int = 4) -> tuple[bool, list[httpx.Request], list[str]]:
    """Deliver one webhook against answers given in turn; (delivered, requests, outcomes)."""
    seen: list[httpx.Request] = []
    outcomes: list[str] = []
    sender = WebhookSender(new_secret(), ["h"], attempts=attempts, backoff_s=0.01, on_outcome=outcomes.append)

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1]

    async def scenario() -> bool:
        sender._client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        try:
            return await sender.deliver("http://h/x", "msg_1", b"{}")
        finally:
            await sender.close()

    return run(scenario()), seen, outcomes


def test_retries_until_a_2xx() -> None:
    ok, seen, outcomes = deliveries([httpx.Response(500), httpx.Response(302), httpx.Response(204)])
    assert ok and len(seen) == 3 and outcomes == ["retried", "retried", "delivered"]
    assert len({r.headers["webhook-id"] for r in seen}) == 1


def test_gives_up_after_the_attempts_or_at_410() -> None:
    ok, seen, outcomes = deliveries([httpx.Response(503)], attempts=3)
    assert not ok and len(seen) == 3 and outcomes == ["retried", "retried", "failed"]
    ok, seen, outcomes = deliveries([httpx.Response(410)])
    assert not ok and len(seen) == 1 and outcomes == ["failed"]


def test_backoff_doubles_and_follows_retry_after() -> None:
    sender = WebhookSender(new_secret(), ["h"], backoff_s=2.0)
    assert 2.0 <= sender._delay(1, None) <= 2.2 and 8.0 <= sender._delay(3, None) <= 8.8
    assert sender._delay(1, 30.0) == 30.0 and sender._delay(30, None) == 3600.0
