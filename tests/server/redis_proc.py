"""A real redis-server for the tests: Debian's binary (`make redis`) on a free loopback
port, started and killed by the test, without persistence unless asked."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Iterator, Optional

import pytest
import redis

from server.state.redis.link import RedisLink

from .conftest import free_port, run

REDIS_SERVER = shutil.which("redis-server")
STORE_DB = 1  # the stores' own tests; the servers use database 0


@dataclass
class RedisProc:
    """A redis-server on 127.0.0.1:`port`; `aof_dir`: persistence with the append-only file
    (fsync every second) there, else none; `args`: more of its options."""

    port: int
    aof_dir: Optional[Path] = None
    args: tuple[str, ...] = ()
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_timeout=5)

    def command(self) -> list[str]:
        """Its own folder in any case: a replica writes what its master sends it to dump.rdb
        there, which a redis-server started later in the same folder would load."""
        persistence = (["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.aof_dir), "--save", ""]
                       if self.aof_dir is not None else
                       ["--save", "", "--appendonly", "no", "--dir", tempfile.mkdtemp(prefix="redis-")])
        return [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", *persistence, *self.args]

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start (exit code {self.proc.poll()})") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown; without persistence every key is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class SentinelProc:
    """A Redis Sentinel (redis-server --sentinel, Debian's binary) on 127.0.0.1:`port`
    watching `master_port` as `service`, quick to fail over (a master is down after
    `down_ms` without answers). Its config file, which Sentinel rewrites, lives in `dir`."""

    port: int
    master_port: int
    dir: Path
    service: str = "unclip"
    down_ms: int = 1000
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> None:
        conf = self.dir / f"sentinel-{self.port}.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                        f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n"
                        f"sentinel down-after-milliseconds {self.service} {self.down_ms}\n"
                        f"sentinel failover-timeout {self.service} 10000\n")
        self.proc = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.master() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis sentinel did not start (exit code {self.proc.poll()})")
            time.sleep(0.05)

    def master(self) -> Optional[int]:
        """The port of the master Sentinel names now (None: not answering yet)."""
        try:
            got = self.client().sentinel_get_master_addr_by_name(self.service)
        except redis.ConnectionError:
            return None
        return int(got[1]) if got else None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def need_redis() -> None:
    if REDIS_SERVER is None:
        pytest.fail("no redis-server on the PATH: `make redis` (part of `make test`) installs Debian's")


def running_redis(**options) -> Iterator[RedisProc]:
    """A started redis-server (RedisProc's options), killed afterwards."""
    need_redis()
    server = RedisProc(free_port(), **options)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def with_store(redis_server: RedisProc, scenario: Callable[[RedisLink], Awaitable[None]]) -> None:
    """Run `scenario(link)` against an emptied database of its own."""
    async def main() -> None:
        link = RedisLink(redis_server.url(STORE_DB))
        await link.start()
        assert link.up, link.problem
        await link.client.flushdb()
        try:
            await scenario(link)
        finally:
            await link.close()

    run(main())
