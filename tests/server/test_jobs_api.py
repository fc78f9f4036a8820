"""Async jobs (`Prefer: respond-async`), their endpoints, events and webhooks, against a
real server with API keys, webhooks to 127.0.0.1 allowed, and one sample per model call
(at most two jobs run at once, so a third one waits in the queue)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import io
import json
import queue
import threading
import time
from typing import Any, Callable, Iterator, Optional

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import FAST, FAST_DECODER, ServerProc, open_png, png

KEYS = ("sk-a", "sk-b", "sk-c")
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
TTL_S = 900
ASYNC = {"Prefer": "respond-async"}
# Long enough to still run when cancelled (tens of seconds alone), cheap to stop.
SLOW = {"prompt": "slow", "size": "32x32", "n": 4, "prior_steps": 250, "best_of": 8, "decoder_steps": 250}
TERMINAL = {"image.job.completed", "image.job.failed", "image.job.cancelled", "image.job.expired"}


@pytest.fixture(scope="module")
def jobs_server(launch_server: Callable[..., ServerProc]) -> ServerProc:
    return launch_server(env={"UNCLIP_API_KEYS": ",".join(KEYS), "UNCLIP_WEBHOOK_HOSTS": "127.0.0.1",
                              "UNCLIP_WEBHOOK_SECRET": SECRET, "UNCLIP_WEBHOOK_BACKOFF_S": "0.2",
                              "UNCLIP_MAX_BATCH": "1", "UNCLIP_JOB_TTL_S": str(TTL_S)})


@pytest.fixture(scope="module")
def clients(jobs_server: ServerProc) -> Iterator[dict[str, httpx.Client]]:
    made = {key: httpx.Client(base_url=jobs_server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
            for key in KEYS}
    yield made
    for c in made.values():
        c.close()


@pytest.fixture
def a(clients: dict[str, httpx.Client]) -> httpx.Client:
    return clients["sk-a"]


def submit(c: httpx.Client, body: Optional[dict] = None, **fields: Any) -> dict:
    """POST an async generation; assert the 202 answer; return the job object."""
    r = c.post("/v1/images/generations", json=body or {"prompt": "a red circle", "size": "32x32", **FAST, **fields},
               headers=ASYNC)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/images/jobs/{job['id']}"
    assert r.headers["preference-applied"] == "respond-async"
    return job


def wait(c: httpx.Client, job_id: str, until: Callable[[dict], bool] = lambda j: j["completed_at"] is not None,
         timeout: float = 30.0) -> dict:
    """Poll the job until `until` holds (default: it ended)."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.get(f"/v1/images/jobs/{job_id}")
        assert r.status_code == 200, r.text
        if until(r.json()) or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.05)


def events(text: str) -> list[dict]:
    """Parse an SSE body into [{"id", "event", "data"}] (comment lines skipped)."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            out.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return out


def pixels(b64: str) -> np.ndarray:
    return np.asarray(open_png(base64.b64decode(b64)))


# ---- create, poll, result --------------------------------------------------------------

def test_async_generation_completes_with_the_synchronous_body(a: httpx.Client) -> None:
    fields = {"seed": 5, "response_format": "b64_json"}
    job = submit(a, **fields)
    assert job["object"] == "image.job" and job["operation"] == "generation"
    assert job["status"] in ("queued", "in_progress") and job["result"] is None and job["completed_at"] is None
    done = wait(a, job["id"])
    assert done["status"] == "completed" and done["progress"] == 1.0 and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]
    assert done["expires_at"] == done["completed_at"] + TTL_S
    sync = a.post("/v1/images/generations", json={"prompt": "a red circle", "size": "32x32", **FAST, **fields})
    assert sync.status_code == 200
    result = done["result"]
    assert result.keys() == sync.json().keys() and result["size"] == "32x32" and result["usage"]["total_tokens"] > 0
    assert np.array_equal(pixels(result["data"][0]["b64_json"]), pixels(sync.json()["data"][0]["b64_json"]))


def test_async_multipart_endpoint_with_url_images(a: httpx.Client) -> None:
    r = a.post("/v1/images/variations", files={"image": ("a.png", png(32), "image/png")},
               data={"n": "2", "size": "32x32", **{k: str(v) for k, v in FAST_DECODER.items()}},
               headers={"Prefer": "wait=5, respond-async"})
    assert r.status_code == 202 and r.json()["operation"] == "variation", r.text
    done = wait(a, r.json()["id"])
    assert done["status"] == "completed" and len(done["result"]["data"]) == 2
    for item in done["result"]["data"]:
        image = httpx.get(item["url"])
        assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (32, 32)


def test_unknown_job_is_404(a: httpx.Client) -> None:
    for r in (a.get("/v1/images/jobs/job_nope"), a.post("/v1/images/jobs/job_nope/cancel"),
              a.delete("/v1/images/jobs/job_nope"), a.get("/v1/images/jobs/job_nope/events")):
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "job_not_found" and r.json()["error"]["param"] == "job_id"


# ---- events ---------------------------------------------------------------------------

def test_events_replay_and_resume_after_last_event_id(a: httpx.Client) -> None:
    job = submit(a, size="64x64", partial_images=2, response_format="b64_json")
    wait(a, job["id"])
    every = events(a.get(f"/v1/images/jobs/{job['id']}/events").text)
    assert [e["id"] for e in every] == list(range(1, len(every) + 1))
    kinds = [e["event"] for e in every]
    assert kinds[-1] == "image.job.completed" and kinds.count("image.job.partial_image") == 2
    assert {"image.job.progress"} == set(kinds[:-1]) - {"image.job.partial_image"}
    assert every[-1]["data"]["job"]["status"] == "completed" and every[-1]["data"]["job"]["result"]["data"]
    partial = next(e["data"] for e in every if e["event"] == "image.job.partial_image")
    assert open_png(base64.b64decode(partial["b64_json"])).size == (64, 64)
    progress = [e["data"]["progress"] for e in every if e["event"] == "image.job.progress"]
    assert progress == sorted(progress) and 0 < progress[0] and progress[-1] < 1

    middle = len(every) // 2
    rest = a.get(f"/v1/images/jobs/{job['id']}/events", headers={"Last-Event-ID": str(middle)})
    assert rest.status_code == 200 and rest.headers["content-type"].startswith("text/event-stream")
    assert [e["id"] for e in events(rest.text)] == [e["id"] for e in every[middle:]]
    started = time.monotonic()
    assert events(a.get(f"/v1/images/jobs/{job['id']}/events", headers={"Last-Event-ID": str(len(every))}).text) == []
    assert time.monotonic() - started < 5  # a finished job's stream ends at once


def test_events_stream_live_until_the_end(a: httpx.Client) -> None:
    job = submit(a, decoder_steps=40)
    with a.stream("GET", f"/v1/images/jobs/{job['id']}/events") as r:
        assert r.status_code == 200
        got = events(r.read().decode())
    assert got[-1]["event"] == "image.job.completed" and [e["id"] for e in got] == list(range(1, len(got) + 1))
    decoder = [e["data"]["step"] for e in got if e["data"].get("stage") == "decoder"]
    assert decoder == list(range(1, 41))  # every step, live, none twice


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9" * 40])
def test_garbage_last_event_id_is_400(a: httpx.Client, value: str) -> None:
    job = submit(a)
    r = a.get(f"/v1/images/jobs/{job['id']}/events", headers={"Last-Event-ID": value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "Last-Event-ID" and r.json()["error"]["type"] == "invalid_request_error"


# ---- cancel, delete ---------------------------------------------------------------------

def statuses(c: httpx.Client, ids: list[str]) -> dict[str, dict]:
    return {i: c.get(f"/v1/images/jobs/{i}").json() for i in ids}


def test_cancel_queued_and_running_jobs(a: httpx.Client, jobs_server: ServerProc) -> None:
    slow = [submit(a, SLOW)["id"] for _ in range(3)]  # two run at once: the third waits
    wait(a, slow[0], lambda j: j["status"] == "in_progress", timeout=10)
    while not any(j["status"] == "queued" for j in statuses(a, slow).values()) and len(slow) < 8:
        slow.append(submit(a, SLOW)["id"])  # should more run at once
        time.sleep(0.2)
    jobs = statuses(a, slow)
    waiting = next(i for i, j in jobs.items() if j["status"] == "queued")
    running = next(i for i, j in jobs.items() if j["status"] == "in_progress")
    assert jobs[waiting]["queue_position"] == 0 and jobs[running]["queue_position"] is None

    first = a.post(f"/v1/images/jobs/{waiting}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "cancelled", first.text
    again = a.post(f"/v1/images/jobs/{waiting}/cancel")
    assert again.status_code == 200 and again.json() == first.json()
    assert [e["event"] for e in events(a.get(f"/v1/images/jobs/{waiting}/events").text)] == ["image.job.cancelled"]

    stopped = a.post(f"/v1/images/jobs/{running}/cancel").json()
    assert stopped["status"] == "cancelled" and stopped["started_at"] is not None and stopped["result"] is None
    assert a.get(f"/v1/images/jobs/{running}").json()["status"] == "cancelled"
    for other in set(slow) - {waiting, running}:
        gone = a.delete(f"/v1/images/jobs/{other}")  # a job still running or queued is cancelled first
        assert gone.json() == {"id": other, "object": "image.job.deleted", "deleted": True}
    deadline = time.monotonic() + 10
    while (load := httpx.get(jobs_server.url("/ready")).json())["running"] + load["queue_depth"] and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert load["running"] == load["queue_depth"] == 0  # the engine stopped every one of them


def test_cancel_completed_job_returns_it_unchanged(a: httpx.Client) -> None:
    done = wait(a, submit(a)["id"])
    r = a.post(f"/v1/images/jobs/{done['id']}/cancel")
    assert r.status_code == 200 and r.json() == done and done["status"] == "completed"


def test_delete_drops_the_job(a: httpx.Client) -> None:
    job_id = wait(a, submit(a)["id"])["id"]
    r = a.delete(f"/v1/images/jobs/{job_id}")
    assert r.status_code == 200 and r.json() == {"id": job_id, "object": "image.job.deleted", "deleted": True}
    assert a.get(f"/v1/images/jobs/{job_id}").status_code == 404
    assert a.get(f"/v1/images/jobs/{job_id}/events").status_code == 404
    assert a.delete(f"/v1/images/jobs/{job_id}").status_code == 404
    assert job_id not in [j["id"] for j in a.get("/v1/images/jobs", params={"limit": 100}).json()["data"]]


# ---- list, owners -------------------------------------------------------------------------

def test_list_is_newest_first_and_paginated(clients: dict[str, httpx.Client]) -> None:
    c = clients["sk-c"]
    made = [submit(c)["id"] for _ in range(3)]
    page = c.get("/v1/images/jobs", params={"limit": 2}).json()
    assert page["object"] == "list" and [j["id"] for j in page["data"]] == made[:0:-1]
    assert page["first_id"] == made[2] and page["last_id"] == made[1] and page["has_more"] is True
    rest = c.get("/v1/images/jobs", params={"limit": 2, "after": page["last_id"]}).json()
    assert [j["id"] for j in rest["data"]] == made[:1] and rest["has_more"] is False
    assert c.get("/v1/images/jobs").json()["data"][0]["object"] == "image.job"
    for params, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"after": "job_nope"}, "after")):
        r = c.get("/v1/images/jobs", params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_another_keys_job_does_not_exist_for_it(clients: dict[str, httpx.Client]) -> None:
    mine, other = clients["sk-a"], clients["sk-b"]
    job_id = submit(mine)["id"]
    for r in (other.get(f"/v1/images/jobs/{job_id}"), other.get(f"/v1/images/jobs/{job_id}/events"),
              other.post(f"/v1/images/jobs/{job_id}/cancel"), other.delete(f"/v1/images/jobs/{job_id}")):
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert job_id not in [j["id"] for j in other.get("/v1/images/jobs", params={"limit": 100}).json()["data"]]
    assert other.get("/v1/images/jobs", params={"after": job_id}).status_code == 400
    assert wait(mine, job_id)["status"] == "completed"  # untouched by the other key's calls


# ---- requests that do not combine ----------------------------------------------------------

@pytest.mark.parametrize("fields, headers, param", [
    ({"webhook_url": "http://hooks.example.com/done"}, ASYNC, "webhook_url"),  # host not allowed
    ({"webhook_url": "ftp://127.0.0.1/done"}, ASYNC, "webhook_url"),
    ({"webhook_url": "http://user:pw@127.0.0.1/done"}, ASYNC, "webhook_url"),
    ({"webhook_url": "http://127.0.0.1/done"}, {}, "webhook_url"),  # not async
    ({"stream": True}, ASYNC, "stream"),
])
def test_refused_combinations_are_400(a: httpx.Client, fields: dict, headers: dict, param: str) -> None:
    r = a.post("/v1/images/generations", json={"prompt": "x", "size": "32x32", **FAST, **fields}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_webhooks_are_off_without_allowed_hosts(server: ServerProc) -> None:
    r = httpx.post(server.url("/v1/images/generations"), headers=ASYNC, timeout=60,
                   json={"prompt": "x", "size": "32x32", **FAST, "webhook_url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url"
    assert r.json()["error"]["code"] == "webhooks_disabled"


# ---- webhooks ------------------------------------------------------------------------------

class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1: answers the given statuses in turn (then 200) and
    records every request's headers and body."""

    def __init__(self, statuses: list[int]):
        self.statuses, self.got = list(statuses), queue.Queue()
        super().__init__(("127.0.0.1", 0), ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.got.put((dict((k.lower(), v) for k, v in self.headers.items()), body))
        self.send_response(self.server.statuses.pop(0) if self.server.statuses else 200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification: HMAC-SHA256 keyed with the base64 part of the
    secret over "{webhook-id}.{webhook-timestamp}.{body}", against any `v1,` signature."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, g) for g in given)


def test_webhook_is_signed_and_retried(a: httpx.Client, jobs_server: ServerProc) -> None:
    receiver = Receiver([500])
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        job = submit(a, webhook_url=receiver.url)
        first, second = receiver.got.get(timeout=30), receiver.got.get(timeout=30)
    finally:
        receiver.shutdown()
        receiver.server_close()
    for headers, body in (first, second):
        assert verify(SECRET, headers, body), headers
        assert not verify("whsec_" + base64.b64encode(bytes(32)).decode(), headers, body)  # the check can fail
        assert not verify(SECRET, headers, body + b" ")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 300
        assert headers["content-type"] == "application/json"
    assert first[0]["webhook-id"] == second[0]["webhook-id"] and first[0]["webhook-id"].startswith("msg_")
    assert first[1] == second[1]
    event = json.loads(second[1])
    assert event["type"] == "image.job.completed" and event["timestamp"].endswith("Z")
    assert event["data"]["id"] == job["id"] and event["data"]["status"] == "completed"
    assert event["data"]["result"]["data"]
    metrics = httpx.get(jobs_server.url("/metrics")).text
    assert 'unclip_webhook_deliveries_total{outcome="retried"} 1.0' in metrics
    assert 'unclip_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics
    assert 'unclip_async_jobs_total{kind="generation",outcome="completed"}' in metrics
