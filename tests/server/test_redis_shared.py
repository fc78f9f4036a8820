"""Several replicas as one service through Redis (UNCLIP_REDIS_URL): a real redis-server on
a free port, the Redis stores alone against it, and two servers, A and B, sharing it with
API keys and one sample per model call. The last test kills Redis and starts it again."""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from server.api.idempotency import digest
from server.requests.images import FileFormat
from server.requests.schemas import (
    EditRequest,
    GenerationRequest,
    InterpolationRequest,
    TextDiffRequest,
    VariationRequest,
)
from server.requests.spec import Spec, Target, spec_from_json, spec_json
from server.state.records import JobRecord
from server.state.redis.link import RedisLink
from server.state.redis.store import RedisJobStore
from server.state.redis.urls import RedisUrlStore
from server.state.url_store import StoreTooSmall
from server.trust.credentials import load_credentials
from tools.c2pa_cert import make_chain, write_chain

from .conftest import FAST, FAST_DECODER, ServerProc, half_transparent, open_png, png, wait_ready
from .redis_proc import RedisProc, with_store
from .test_job_records import check_advance
from .test_jobs_api import ASYNC, events, submit, wait

KEYS = ("sk-a", "sk-b")
# Long enough to still run when cancelled, with a progress report at every one of its steps.
LONG = {"prompt": "slow", "size": "32x32", "n": 1, "best_of": 1, "prior_steps": 250, "decoder_steps": 250}
MEDIUM = {**LONG, "prior_steps": 2, "decoder_steps": 60}


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


def test_redis_store_advance(redis_server: RedisProc) -> None:
    with_store(redis_server, lambda link: check_advance(RedisJobStore(link, ttl_s=60, max_kept=10, pending_ttl_s=120)))


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


def test_specs_round_trip_through_json() -> None:
    """What the global queue stores of a request gives back the same params, target and uploads."""
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    keep = (torch.rand(1, 1, 32, 32) > 0.5).float()
    cases = [("generation", GenerationRequest, {"prompt": "p", "n": 2, "seed": 3, "decoder_steps": 4}, {}),
             ("edit", EditRequest, {"prompt": "p", "n": 1}, {"image": image, "keep": keep}),
             ("variation", VariationRequest, {"eta": 0.5}, {"image": image}),
             ("interpolation", InterpolationRequest, {"thetas": [0, 0.5, 1], "mode": "fixed"},
              {"image0": image, "image1": image.flip(-1)}),
             ("interpolation", InterpolationRequest, {"prompt": ["a", "b"], "frames": 3}, {}),
             ("text_diff", TextDiffRequest, {"prompt": "p", "source_prompt": "q", "frames": 3}, {"image": image})]
    out = Target(32, 7, FileFormat("webp", 80), "low", "b64_json")
    for kind, model, fields, tensors in cases:
        ingredients = tuple(bytes([i, 0, 255]) * 3 for i, name in enumerate(tensors) if name.startswith("image"))
        spec = Spec(kind, model.model_validate(fields), out, tensors, ingredients)
        back, extra = spec_from_json(spec_json(spec, base_url="http://x/", cost_s=None))
        assert back.ingredients == ingredients
        assert (back.kind, back.params, back.out) == (kind, spec.params, out) and back.params.model_fields_set == \
            spec.params.model_fields_set
        assert extra == {"base_url": "http://x/", "cost_s": None}
        assert back.tensors.keys() == tensors.keys()
        assert all(torch.equal(back.tensors[k], t) and back.tensors[k].dtype == t.dtype for k, t in tensors.items())


def test_a_retry_of_the_same_uploads_has_the_same_digest(tmp_path: Path) -> None:
    """Idempotency-Key compares a retry's spec with the first one's: two readings of one
    upload make different C2PA ingredient archives (fresh instance ids), and still the same
    request; other pixels make another."""
    paths = write_chain(tmp_path, make_chain("digest test"))
    credentials = load_credentials(paths["chain"], paths["key"])
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(image[0].permute(1, 2, 0).numpy()).save(buf, format="PNG")
    upload = Image.open(io.BytesIO(buf.getvalue()))
    first, again = (credentials.ingredient(buf.getvalue(), "png", 0, upload) for _ in range(2))
    assert first != again
    params, out = VariationRequest.model_validate({"eta": 0.5}), Target((32, 32), 7)
    assert digest(Spec("variation", params, out, {"image": image}, (first,)), False) == \
        digest(Spec("variation", params, out, {"image": image}, (again,)), False)
    assert digest(Spec("variation", params, out, {"image": image.flip(-1)}, (first,)), False) != \
        digest(Spec("variation", params, out, {"image": image}, (first,)), False)


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


def replica(server: ServerProc) -> str:
    """The name the server gives itself in the global queue (its host and process id)."""
    return f"{socket.gethostname()}-{server.proc.pid}"


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


def busy(server: ServerProc) -> int:
    """Jobs the server's engine holds (running and queued)."""
    state = load(server)
    return state["running"] + state["queue_depth"]


def cancel_and_delete_on_b(a: httpx.Client, b: httpx.Client, pair: tuple[ServerProc, ServerProc]) -> None:
    """Five long jobs sent to A: four run (two slots on each replica), one waits in the
    global queue; B cancels the waiting one, then a running one on A, and deletes another:
    they stop; the rest are cancelled on A and both engines go idle."""
    ids = [submit(a, LONG)["id"] for _ in range(5)]
    assert soon(lambda: busy(pair[0]) == 2 and busy(pair[1]) == 2, 20), (load(pair[0]), load(pair[1]))
    jobs = {job_id: a.get(f"/v1/images/jobs/{job_id}").json() for job_id in ids}
    waiting = [j for j, job in jobs.items() if job.get("replica") is None]
    on_a = [j for j, job in jobs.items() if job.get("replica") == replica(pair[0])]
    assert len(waiting) == 1 and len(on_a) == 2, jobs
    assert b.post(f"/v1/images/jobs/{waiting[0]}/cancel").json()["status"] == "cancelled"
    running, other = on_a
    assert wait(b, running, lambda j: j["progress"] > 0, 20)["status"] == "in_progress"  # A's progress, on B
    stopped = b.post(f"/v1/images/jobs/{running}/cancel")
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled", stopped.text
    assert b.delete(f"/v1/images/jobs/{other}").json() == {"id": other, "object": "image.job.deleted",
                                                           "deleted": True}
    assert a.get(f"/v1/images/jobs/{other}").status_code == 404
    assert soon(lambda: busy(pair[0]) == 0, 15)  # A stopped both
    for job_id in ids:
        a.post(f"/v1/images/jobs/{job_id}/cancel")
    assert soon(lambda: busy(pair[1]) == 0, 15)
    assert a.get(f"/v1/images/jobs/{running}").json() == stopped.json()  # A's own end did not overwrite it
    assert events(a.get(f"/v1/images/jobs/{running}/events").text)[-1]["event"] == "image.job.cancelled"
    assert a.get(f"/v1/images/jobs/{waiting[0]}").json().get("replica") is None  # it never ran


def test_cancel_and_delete_on_b_stop_the_jobs_on_a(clients: dict[str, httpx.Client],
                                                   pair: tuple[ServerProc, ServerProc]) -> None:
    cancel_and_delete_on_b(clients["a"], clients["b"], pair)


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


# ---- the global queue ------------------------------------------------------------------------

def test_jobs_sent_only_to_a_run_partly_on_b(clients: dict[str, httpx.Client],
                                              pair: tuple[ServerProc, ServerProc]) -> None:
    a = clients["a"]
    ids = [submit(a, decoder_steps=10, seed=i)["id"] for i in range(8)]
    done = [wait(a, job_id, timeout=60) for job_id in ids]
    assert all(j["status"] == "completed" for j in done), done
    ran = [j.get("replica") for j in done]
    assert set(ran) == {replica(pair[0]), replica(pair[1])}, ran  # two slots on A: B took some


def test_sync_request_on_a_runs_on_b(clients: dict[str, httpx.Client], pair: tuple[ServerProc, ServerProc]) -> None:
    """A's slots are full: its synchronous request runs on B, and A answers it."""
    a, b = clients["a"], clients["b"]
    body = {"prompt": "a red circle", "size": "32x32", **FAST, "seed": 9, "response_format": "b64_json"}
    reference = wait(a, submit(a, body)["id"])
    ids = [submit(a, LONG)["id"] for _ in range(4)]
    assert soon(lambda: busy(pair[0]) == 2 and busy(pair[1]) == 2, 20), (load(pair[0]), load(pair[1]))
    on_a = [j for j in ids if a.get(f"/v1/images/jobs/{j}").json().get("replica") == replica(pair[0])]
    waiting = [submit(a, LONG)["id"] for _ in range(2)]  # every slot is taken: these wait in Redis
    places = [b.get(f"/v1/images/jobs/{j}").json()["queue_position"] for j in waiting]
    assert sorted(places) == [0, 1], places  # their order is their estimated finish's, not only arrival
    for job_id in waiting:
        assert b.post(f"/v1/images/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    for job_id in set(ids) - set(on_a):
        assert b.post(f"/v1/images/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    sync = a.post("/v1/images/generations", json=body)
    assert sync.status_code == 200, sync.text
    assert pixels(sync.json()["data"][0]["b64_json"]) == pixels(reference["result"]["data"][0]["b64_json"])
    assert sync.json()["usage"] == reference["result"]["usage"]
    assert [a.get(f"/v1/images/jobs/{j}").json()["status"] for j in on_a] == ["in_progress"] * 2  # A stayed full
    assert a.get("/v1/images/jobs").json()["data"][0]["id"] == waiting[-1]  # the synchronous job is not listed
    for job_id in on_a:
        a.post(f"/v1/images/jobs/{job_id}/cancel")
    assert soon(lambda: busy(pair[0]) == 0, 15)


def global_depth(server: ServerProc) -> float:
    text = httpx.get(server.url("/metrics")).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "unclip_global_queue_depth")


def test_global_queue_full_is_429(clients: dict[str, httpx.Client], pair: tuple[ServerProc, ServerProc]) -> None:
    """Four jobs run (two slots on each replica) and 32 wait (UNCLIP_QUEUE_SIZE): the next,
    sent to either replica, is refused, with a Retry-After."""
    a, b = clients["a"], clients["b"]
    ids = [submit(a, LONG)["id"] for _ in range(4)]
    assert soon(lambda: busy(pair[0]) == 2 and busy(pair[1]) == 2, 20)
    ids += [submit(a if i % 2 else b, LONG)["id"] for i in range(32)]
    for c in (a, b):
        r = c.post("/v1/images/generations", json={"prompt": "x", "size": "32x32", **FAST}, headers=ASYNC)
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full", r.text
        assert int(r.headers["retry-after"]) >= 1
    for server in pair:  # every replica reports the one global depth (refreshed each second)
        assert soon(lambda s=server: global_depth(s) == 32, 5), global_depth(server)
    for job_id in ids:
        a.post(f"/v1/images/jobs/{job_id}/cancel")
    assert soon(lambda: busy(pair[0]) == 0 and busy(pair[1]) == 0, 15)
    assert wait(a, submit(b)["id"])["status"] == "completed"  # the cancelled ones left the queue


def test_an_edit_sent_to_a_runs_from_its_stored_spec(clients: dict[str, httpx.Client]) -> None:
    """The upload travels in the spec: the opaque half comes back exactly."""
    image = png(32, seed=1)
    r = clients["a"].post("/v1/images/edits", data={"prompt": "a green field", "size": "32x32",
                                                     "response_format": "b64_json", "seed": "3", **FAST},
                          files={"image": ("in.png", image, "image/png"),
                                 "mask": ("mask.png", png(32, half_transparent(32)), "image/png")})
    assert r.status_code == 200, r.text
    out = np.asarray(open_png(base64.b64decode(r.json()["data"][0]["b64_json"])).convert("RGB"))
    assert np.array_equal(out[:, 16:], np.asarray(open_png(image).convert("RGB"))[:, 16:])


def test_an_interpolation_of_two_images_runs_from_its_stored_spec(clients: dict[str, httpx.Client]) -> None:
    r = clients["a"].post("/v1/images/interpolations", data={"frames": "3", "size": "32x32", "response_format":
                                                                 "b64_json", **FAST_DECODER},
                          files=[("image[]", ("a.png", png(32, seed=1), "image/png")),
                                 ("image[]", ("b.png", png(32, seed=2), "image/png"))])
    assert r.status_code == 200, r.text
    assert [d["theta"] for d in r.json()["data"]] == [0.0, 0.5, 1.0]


def test_sigkill_of_the_replica_running_a_job_hands_it_to_another(
        launch_server: Callable[..., ServerProc], redis_server: RedisProc, clients: dict[str, httpx.Client],
        pair: tuple[ServerProc, ServerProc]) -> None:
    """C (lease 2 s) runs two of six jobs when it is killed: they complete on A and B."""
    a = clients["a"]
    c = launch_server(env={"UNCLIP_REDIS_URL": redis_server.url(), "UNCLIP_API_KEYS": ",".join(KEYS),
                           "UNCLIP_MAX_BATCH": "1", "UNCLIP_LEASE_S": "2"})
    ids = [submit(a, MEDIUM, seed=i)["id"] for i in range(6)]

    def on_c() -> list[str]:
        jobs = [a.get(f"/v1/images/jobs/{j}").json() for j in ids]
        return [j["id"] for j in jobs if j.get("replica") == replica(c) and j["progress"] > 0 and not j["completed_at"]]

    assert soon(lambda: len(on_c()) > 0, 20)
    lost = on_c()
    c.proc.send_signal(signal.SIGKILL)
    c.proc.wait(10)
    started = time.monotonic()
    done = [wait(a, job_id, timeout=60) for job_id in ids]
    assert all(j["status"] == "completed" for j in done), done
    assert {j.get("replica") for j in done if j["id"] in lost} <= {replica(pair[0]), replica(pair[1])}
    assert time.monotonic() - started < 60


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
    cancel_and_delete_on_b(a, b, pair)  # A listens for cancels again, both claim again


def test_an_idempotency_key_starts_one_job_on_any_replica(clients: dict[str, httpx.Client]) -> None:
    a, b, other = clients["a"], clients["b"], clients["b_other"]
    body = {"prompt": "once", "size": "32x32", "seed": 5, **FAST}
    key = {"Idempotency-Key": f"key-{time.monotonic_ns()}"}
    first = a.post("/v1/images/generations", json=body, headers={**ASYNC, **key})
    again = b.post("/v1/images/generations", json=body, headers={**ASYNC, **key})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    mine = other.post("/v1/images/generations", json=body, headers={**ASYNC, **key})  # another API key's
    assert mine.status_code == 202 and mine.json()["id"] != first.json()["id"]
    changed = b.post("/v1/images/generations", json={**body, "seed": 6}, headers={**ASYNC, **key})
    assert changed.status_code == 400, changed.text
    assert (changed.json()["error"]["code"], changed.json()["error"]["param"]) == ("idempotency_key_reused",
                                                                                   "Idempotency-Key")
    sync_key = {"Idempotency-Key": f"sync-{time.monotonic_ns()}"}
    answers = [c.post("/v1/images/generations", json={**body, "response_format": "b64_json"}, headers=sync_key)
               for c in (a, b)]
    assert [r.status_code for r in answers] == [200, 200]
    assert answers[0].json()["created"] == answers[1].json()["created"]  # the one job's answer, twice
    assert answers[0].json()["data"] == answers[1].json()["data"]
    bad = a.post("/v1/images/generations", json=body, headers={"Idempotency-Key": "x" * 256})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Idempotency-Key"
