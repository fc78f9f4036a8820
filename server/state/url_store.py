"""The store behind `response_format=url` (`ImageStore`: put, get, expires_in, all on the
event loop) and its in-memory implementation `UrlStore`: unguessable ids, expiry, a bound
in bytes (server/state/redis/urls.py keeps them in Redis instead, for every replica).

Ids are 192-bit `secrets.token_urlsafe` values (`new_id`): the URL itself is the capability
to read the image, as with OpenAI's signed URLs. When the store would exceed its byte bound
the oldest images are evicted, even before they expire.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Callable, NamedTuple, Optional, Protocol


class StoreTooSmall(ValueError):
    """One image is larger than the whole store."""


class ImageStore(Protocol):
    """Where the images of `url` responses live until they expire."""

    async def put(self, data: bytes) -> str:
        """Store data and return its new id (StoreTooSmall if it can never fit)."""

    async def get(self, key: str) -> Optional[bytes]:
        """The bytes stored under key, or None if unknown or expired."""

    async def expires_in(self, key: str) -> float:
        """Seconds until key expires (0 if unknown)."""


def new_id() -> str:
    """A new unguessable image id (192 random bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def check_fits(data: bytes, max_bytes: int) -> None:
    """StoreTooSmall when one image exceeds the whole store's bound."""
    if len(data) > max_bytes:
        raise StoreTooSmall(f"an image of {len(data)} bytes exceeds the URL store's {max_bytes} bytes")


class _Entry(NamedTuple):
    data: bytes
    expires: float


class UrlStore:
    """An ImageStore in this process: id -> file bytes, each for `ttl_s` seconds, at most
    `max_bytes` in all."""

    def __init__(self, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_bytes, self.clock = ttl_s, max_bytes, clock
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, data: bytes) -> str:
        """Store data and return its new id, evicting expired and then oldest entries."""
        check_fits(data, self.max_bytes)
        key = new_id()
        with self._lock:
            self._purge_expired()
            while self._bytes + len(data) > self.max_bytes:
                self._pop_oldest()
            self._items[key] = _Entry(data, self.clock() + self.ttl_s)
            self._bytes += len(data)
        return key

    async def get(self, key: str) -> Optional[bytes]:
        """The bytes stored under key, or None if unknown or expired."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None or entry.expires <= self.clock():
                return None
            return entry.data

    async def expires_in(self, key: str) -> float:
        """Seconds until key expires (0 if unknown)."""
        entry = self._items.get(key)
        return max(0.0, entry.expires - self.clock()) if entry else 0.0

    def _purge_expired(self) -> None:
        now = self.clock()
        while self._items:
            key, entry = next(iter(self._items.items()))
            if entry.expires > now:  # insertion order is expiry order (one TTL for all)
                break
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        _, entry = self._items.popitem(last=False)
        self._bytes -= len(entry.data)
