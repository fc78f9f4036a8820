"""Limits and lifecycle on dedicated servers: 413, per-file and pixel limits, 504 deadline,
429 queue full, client disconnect cancelling its job, SIGTERM draining."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from typing import Callable

import httpx
import openai
import pytest
from PIL import Image

from .conftest import FAST, ServerProc, png

HEAVY = {"prior_steps": 1000, "decoder_steps": 1000, "upsampler_steps": 1000, "best_of": 1}


@pytest.fixture(scope="module")
def strict(launch_server: Callable[..., ServerProc]) -> ServerProc:
    """Small body and upload limits, a 1 s default deadline; no admission check, so that a
    heavy request runs into its deadline (504)."""
    return launch_server(env={"UNCLIP_MAX_REQUEST_BODY_BYTES": "200000", "UNCLIP_MAX_UPLOAD_BYTES": "30000",
                              "UNCLIP_MAX_IMAGE_PIXELS": "4096", "UNCLIP_DEFAULT_DEADLINE_S": "1",
                              "UNCLIP_MAX_STEPS": "1000", "UNCLIP_ADMISSION_CHECK": "false"})


@pytest.fixture(scope="module")
def small_queue(launch_server: Callable[..., ServerProc]) -> ServerProc:
    """One job at a time, one waiting; heavy requests allowed."""
    return launch_server(env={"UNCLIP_QUEUE_SIZE": "1", "UNCLIP_MAX_BATCH": "1", "UNCLIP_DRAIN_GRACE_S": "60",
                              "UNCLIP_MAX_STEPS": "1000"})


def test_body_over_limit_is_413(strict: ServerProc) -> None:
    big = png(32) + b"\0" * 300_000
    with pytest.raises(openai.APIStatusError) as info:
        strict.client().images.edit(image=("a.png", big, "image/png"), prompt="x")
    assert info.value.status_code == 413 and info.value.code == "request_too_large"

    def chunks():  # no Content-Length: counted while reading
        for _ in range(40):
            yield b"x" * 10_000

    r = httpx.post(strict.url("/v1/images/generations"), content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert r.headers["x-request-id"]


def test_upload_over_file_limit(strict: ServerProc) -> None:
    noisy = png(128, seed=3)  # ~49 KB of noise
    assert 30_000 < len(noisy) < 200_000
    with pytest.raises(openai.BadRequestError) as info:
        strict.client().images.edit(image=("a.png", noisy, "image/png"), prompt="x")
    assert (info.value.param, info.value.code) == ("image", "image_too_large")


def test_image_over_pixel_limit(strict: ServerProc) -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (128, 128)).save(buf, format="PNG")  # small file, 16384 pixels
    with pytest.raises(openai.BadRequestError) as info:
        strict.client().images.edit(image=("a.png", buf.getvalue(), "image/png"), prompt="x",
                                    mask=("m.png", png(32), "image/png"))
    assert (info.value.param, info.value.code) == ("image", "image_too_large")


def test_deadline_is_504(strict: ServerProc) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        strict.client().images.generate(prompt="slow", extra_body=HEAVY)
    assert info.value.status_code == 504 and info.value.code == "deadline_exceeded"
    res = strict.client().images.generate(prompt="fast", size="32x32", extra_body=FAST)  # still serving
    assert len(res.data) == 1


def busy(server: ServerProc) -> tuple[int, int]:
    body = httpx.get(server.url("/ready")).json()
    return body["queue_depth"], body["running"]


def wait_idle(server: ServerProc, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if busy(server) == (0, 0):
            return True
        time.sleep(0.1)
    return False


class Hog:
    """A streaming heavy generation held open until released (then its connection closes)."""

    def __init__(self, server: ServerProc):
        self.opened, self.release, self.status = threading.Event(), threading.Event(), None
        self.thread = threading.Thread(target=self.run, args=(server,), daemon=True)
        self.thread.start()
        assert self.opened.wait(30)

    def run(self, server: ServerProc) -> None:
        body = {"prompt": "hog", "stream": True, **HEAVY}
        with httpx.stream("POST", server.url("/v1/images/generations"), json=body, timeout=300) as r:
            self.status = r.status_code
            self.opened.set()
            self.release.wait(120)

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)


def test_queue_full_is_429_and_disconnect_cancels(small_queue: ServerProc) -> None:
    hogs = []
    try:
        while len(hogs) < 4 and 429 not in [h.status for h in hogs]:
            hogs.append(Hog(small_queue))
            time.sleep(0.2)
        with pytest.raises(openai.RateLimitError) as info:  # the official client's class
            small_queue.client().images.generate(prompt="x", extra_body=FAST)
        assert info.value.code == "queue_full"
        r = httpx.post(small_queue.url("/v1/images/generations"), json={"prompt": "q", **FAST})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        for h in hogs:
            h.close()  # client disconnects: their jobs are cancelled
    assert wait_idle(small_queue, 10.0), busy(small_queue)  # heavy jobs would take minutes
    assert "cancelling job" in small_queue.log()


def test_sigterm_drains(small_queue: ServerProc) -> None:
    assert wait_idle(small_queue, 30.0)
    slow = {"prior_steps": 20, "decoder_steps": 100, "upsampler_steps": 20, "best_of": 1}
    events: list[str] = []
    with httpx.stream("POST", small_queue.url("/v1/images/generations"), timeout=120,
                      json={"prompt": "drain", "size": "32x32", "stream": True, **slow}) as r:
        lines = r.iter_lines()
        for line in lines:  # wait until the job runs
            if line.startswith("event: "):
                events.append(line[7:])
                break
        small_queue.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10  # the signal is handled between two steps of the event loop
        while httpx.get(small_queue.url("/ready")).status_code != 503:
            assert time.monotonic() < deadline, "/ready still 200 after SIGTERM"
            time.sleep(0.05)
        refused = httpx.post(small_queue.url("/v1/images/generations"), json={"prompt": "late", **FAST})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        assert httpx.get(small_queue.url("/health")).status_code == 200
        for line in lines:
            if line.startswith("event: "):
                events.append(line[7:])
            if line.startswith("data: ") and "image_generation.completed" in line:
                assert json.loads(line[6:])["b64_json"]
    assert events[-1] == "image_generation.completed"
    assert small_queue.proc.wait(30) == 0
