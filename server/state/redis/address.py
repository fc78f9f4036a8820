"""Where the shared Redis is (`UNCLIP_REDIS_URL`), and a client of it.

- `redis://[[user]:password@]host:6379/0`, `rediss://` (TLS), `unix://`: one Redis at that
  address, through redis-py's `Redis.from_url`.
- `redis+sentinel://[[user]:password@]host:26379[,host:26379...]/service[/db]`
  (`rediss+sentinel://` for TLS to the Redis servers): the master that Redis Sentinel names
  for `service`. redis-py's Sentinel asks the sentinels for it before each new connection,
  so after a failover the next connection goes to the promoted replica; a connection still
  open to the demoted master fails its next command (ReadOnly), and redis-py's one retry
  takes a new one. The password is the Redis servers'; sentinels that want their own take
  `?sentinel_password=...` (and `sentinel_username`). This is the scheme that Celery,
  Kombu and GitLab read too, with the service name first in the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", *SENTINEL_SCHEMES)
SENTINEL_PORT = 26379
SENTINEL_QUERY = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelAddress:
    """A `redis+sentinel://` URL, parsed."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    sentinel_username: Optional[str] = None
    sentinel_password: Optional[str] = None
    ssl: bool = False


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEMES)


def parse_sentinel_url(url: str) -> SentinelAddress:
    """'redis+sentinel://:pw@h1:26379,h2/mymaster/1' -> its parts; ValueError, saying what
    is wrong, for anything else."""
    if not is_sentinel(url):
        raise ValueError(f"a Sentinel URL starts with {' or '.join(SENTINEL_SCHEMES)}")
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    path = [unquote(p) for p in parts.path.split("/")[1:] if p]
    if not path or len(path) > 2:
        raise ValueError("a Sentinel URL names the service, then optionally the database: "
                         "redis+sentinel://host:26379/mymaster/0")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"the database in a Sentinel URL is a number, got {path[1]!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(SENTINEL_QUERY))
    if unknown:
        raise ValueError(f"unknown options {unknown} in the Sentinel URL; it takes {list(SENTINEL_QUERY)}")
    db = int(path[1]) if len(path) == 2 else 0
    return SentinelAddress(tuple(_host_port(h) for h in hosts.split(",")), path[0], db, unquote(username) or None,
                           unquote(password) or None, query.get("sentinel_username"), query.get("sentinel_password"),
                           parts.scheme.startswith("rediss"))


def _host_port(text: str) -> tuple[str, int]:
    """'host:26379', 'host' (port 26379), '[::1]:26379' or '[::1]' -> (host, port)."""
    text = text.strip()
    if text.endswith("]") or ":" not in text:
        host, port = text, str(SENTINEL_PORT)
    else:
        host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port for each sentinel, got {text!r}")
    return host, int(port)


def connect(url: str, **options: Any) -> tuple[Redis, Callable[[], Awaitable[None]]]:
    """A client of the Redis `url` names (its connections made with `options`: timeouts,
    retry, health checks), and what closes every connection it opened (the sentinels'
    too). Nothing is connected yet."""
    if not is_sentinel(url):
        client = Redis.from_url(url, **options)
        return client, client.aclose
    where = parse_sentinel_url(url)
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(where.sentinels, sentinel_kwargs={**timeouts, "username": where.sentinel_username,
                                                          "password": where.sentinel_password},
                        username=where.username, password=where.password, db=where.db, ssl=where.ssl, **options)
    client = sentinel.master_for(where.service)

    async def close() -> None:
        for each in (client, *sentinel.sentinels):
            await each.aclose()

    return client, close
