"""Fixtures that run the real server: `python -m server` as a subprocess on 127.0.0.1 with
the tiny random-weight model, waited for until /ready, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, Optional

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-test-key"

# Few steps everywhere: the tiny model is random, only the plumbing is under test.
FAST_DECODER = {"decoder_steps": 2, "upsampler_steps": 2}
FAST = {"prior_steps": 2, "best_of": 1, **FAST_DECODER}


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on a fresh event loop in its own thread (a browser test's
    Playwright may hold a running loop on the main thread)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    """A running server subprocess."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    keys: tuple[str, ...] = ()
    exit_code: Optional[int] = field(default=None)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def client(self, api_key: Optional[str] = None, **kw) -> openai.OpenAI:
        """The official client against this server (no retries: errors surface at once)."""
        key = api_key if api_key is not None else (self.keys[0] if self.keys else "unused")
        return openai.OpenAI(base_url=self.url("/v1"), api_key=key, max_retries=0, timeout=120, **kw)

    def http(self, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[0]}"} if self.keys else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait; kill if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        return self.exit_code


def wait_ready(server: ServerProc, timeout: float = 180.0, path: str = "/ready") -> None:
    """Poll `path` until 200; fail with the server's log if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(server.url(path), timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"no 200 from {path} after {timeout} s:\n{server.log()[-4000:]}")


def launch(model_dir: Path, log_dir: Path, env: Optional[dict[str, str]] = None, wait: bool = True) -> ServerProc:
    """Start `python -m server` on a free port with the given UNCLIP_* settings. Every
    stage batches up to max_batch unless a test asks for the measured caps
    (UNCLIP_BATCH_PROFILE=measure, tests/server/test_batch_caps.py)."""
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "UNCLIP_MODEL_DIR": str(model_dir), "UNCLIP_HOST": "127.0.0.1",
                "UNCLIP_PORT": str(port), "UNCLIP_DEVICE": "cpu", "UNCLIP_LOG_LEVEL": "info",
                "OMP_NUM_THREADS": "1", "UNCLIP_BATCH_PROFILE": "off", **(env or {})}
    log_path = log_dir / f"server-{port}.log"
    out = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, env=full_env, stdout=out,
                            stderr=subprocess.STDOUT)
    keys = tuple(k for k in full_env.get("UNCLIP_API_KEYS", "").split(",") if k)
    server = ServerProc(proc, port, log_path, keys)
    if wait:
        wait_ready(server)
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """One redis-server for the session (tests/server/redis_proc.py), without persistence."""
    from .redis_proc import running_redis
    yield from running_redis()


@pytest.fixture(scope="session")
def server(launch_server: Callable[..., ServerProc]) -> ServerProc:
    """The shared server: default settings, no API keys."""
    return launch_server()


@pytest.fixture(scope="session")
def client(server: ServerProc) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def http(server: ServerProc) -> Iterator[httpx.Client]:
    with server.http() as c:
        yield c


# ---- test images -----------------------------------------------------------------------

def png(size: int = 32, alpha: Optional[np.ndarray] = None, seed: int = 0, height: Optional[int] = None) -> bytes:
    """A random RGB(A) PNG; alpha [H, W] uint8 makes it RGBA."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height or size, size, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    if alpha is not None:
        img = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def half_transparent(size: int = 32) -> np.ndarray:
    """Alpha with the left half transparent (to edit), the right half opaque."""
    alpha = np.full((size, size), 255, np.uint8)
    alpha[:, : size // 2] = 0
    return alpha


def open_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    return img
