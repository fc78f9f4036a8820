"""In-memory store behind `response_format=url`: unguessable ids, expiry, a bound in bytes.

Ids are 192-bit `secrets.token_urlsafe` values: the URL itself is the capability to read
the image, as with OpenAI's signed URLs. When the store would exceed its byte bound the
oldest images are evicted, even before they expire.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Callable, NamedTuple, Optional


class StoreTooSmall(ValueError):
    """One image is larger than the whole store."""


class _Entry(NamedTuple):
    data: bytes
    expires: float


class UrlStore:
    """id -> PNG bytes, each for `ttl_s` seconds, at most `max_bytes` in all."""

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

    def put(self, data: bytes) -> str:
        """Store data and return its new id, evicting expired and then oldest entries."""
        if len(data) > self.max_bytes:
            raise StoreTooSmall(f"an image of {len(data)} bytes exceeds the URL store's {self.max_bytes} bytes")
        key = secrets.token_urlsafe(24)
        with self._lock:
            self._purge_expired()
            while self._bytes + len(data) > self.max_bytes:
                self._pop_oldest()
            self._items[key] = _Entry(data, self.clock() + self.ttl_s)
            self._bytes += len(data)
        return key

    def get(self, key: str) -> Optional[bytes]:
        """The bytes stored under key, or None if unknown or expired."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None or entry.expires <= self.clock():
                return None
            return entry.data

    def expires_in(self, key: str) -> float:
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
