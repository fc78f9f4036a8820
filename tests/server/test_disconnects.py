"""Clients that go away, over real sockets against the real server: one that closes in
the middle of its request body, one that closes while its synchronous generation runs.
Each is counted as outcome 499 (client closed request), not as a 4xx/5xx the server
answered, and leaves no ERROR line or traceback in the server's log."""

from __future__ import annotations

import re
import socket
import time
from typing import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import FAST, FAST_DECODER, ServerProc, png

SLOW = {"prior_steps": 200, "decoder_steps": 200, "upsampler_steps": 200, "best_of": 1}  # seconds: time to leave


def sample(server: ServerProc, name: str, **labels: str) -> float:
    """The value of the series `name` with exactly these labels in a scrape (0 if absent)."""
    for family in text_string_to_metric_families(httpx.get(server.url("/metrics")).text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def send_head(server: ServerProc, request: httpx.Request, rid: str, body: bytes) -> socket.socket:
    """A socket that has sent `request`'s line and headers (its full Content-Length, an
    x-request-id) and then `body`, which may be only part of the request's body."""
    headers = {"Host": "127.0.0.1", "Content-Type": request.headers["content-type"],
               "Content-Length": str(len(request.content)), "x-request-id": rid}
    head = f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(head.encode("latin-1") + body)
    return sock


def outcomes(server: ServerProc, route: str) -> dict[str, float]:
    """unclip_requests_total of `route` by outcome."""
    text = httpx.get(server.url("/metrics")).text
    return {s.labels["outcome"]: s.value for family in text_string_to_metric_families(text)
            if family.name == "unclip_requests" for s in family.samples
            if s.name == "unclip_requests_total" and s.labels["route"] == route}


def left_cleanly(server: ServerProc, route: str, before: dict[str, float], log_from: int, rid: str) -> None:
    """The request is counted once, as 499 only; the log says the client went away, at
    INFO, and holds no ERROR and no traceback."""
    wait_until(lambda: outcomes(server, route) != before)
    time.sleep(0.5)  # a second count would show by now
    after = outcomes(server, route)
    assert {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)} == {"499": 1}
    log = server.log()[log_from:]
    assert f"INFO server.app: request {rid}: the client went away" in log, log[-3000:]
    assert not re.search(r"\bERROR\b|Traceback", log), log[-3000:]


@pytest.mark.parametrize("path", ["/v1/images/variations", "/v1/images/generations"])
def test_client_gone_mid_body(server: ServerProc, path: str) -> None:
    """Headers and half the body (a multipart upload, a JSON body), then close: once a
    500 with a logged ClientDisconnect traceback (JSON) or a 400 'Malformed form body'
    (multipart)."""
    if path.endswith("variations"):
        request = httpx.Request("POST", server.url(path), files={"image": ("a.png", png(32), "image/png")},
                                data={"size": "32x32", **{k: str(v) for k, v in FAST_DECODER.items()}})
    else:
        request = httpx.Request("POST", server.url(path), json={"prompt": "cut off", "size": "32x32", **FAST})
    request.read()
    before, log_from, rid = outcomes(server, path), len(server.log()), f"cut-{path.rsplit('/', 1)[1]}"
    sock = send_head(server, request, rid, request.content[: len(request.content) // 2])
    time.sleep(0.3)  # the server reads the half
    sock.close()
    left_cleanly(server, path, before, log_from, rid)


def test_client_gone_while_generating(server: ServerProc) -> None:
    """The whole request, then close once its job runs: the job is cancelled; once a 503
    logged at ERROR ('job ... failed: cancelled')."""
    path = "/v1/images/generations"
    request = httpx.Request("POST", server.url(path), json={"prompt": "left", "size": "32x32", **SLOW})
    request.read()
    started = sample(server, "unclip_queue_wait_seconds_count", kind="generation")
    cancelled = sample(server, "unclip_jobs_total", kind="generation", outcome="cancelled")
    before, log_from = outcomes(server, path), len(server.log())
    sock = send_head(server, request, "left-waiting", request.content)
    wait_until(lambda: sample(server, "unclip_queue_wait_seconds_count", kind="generation") > started)
    sock.close()
    left_cleanly(server, path, before, log_from, "left-waiting")
    wait_until(lambda: sample(server, "unclip_jobs_total", kind="generation", outcome="cancelled") == cancelled + 1)
