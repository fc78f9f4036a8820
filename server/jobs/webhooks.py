"""Webhooks of async jobs, signed as the Standard Webhooks specification says
(github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md, v1.0.0).

A delivery is one POST of a JSON payload `{"type", "timestamp", "data"}` (minified; `type`
is `image.job.completed`, `.failed`, `.cancelled` or `.expired`, `timestamp` the event's
time in ISO 8601, `data` the job object) with the headers
- `webhook-id`: `msg_...`, the same for every attempt of one event (an idempotency key);
- `webhook-timestamp`: the attempt's unix seconds;
- `webhook-signature`: `v1,` + base64 of HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`
  keyed with the secret, given as `whsec_` + base64 (24 to 64 random bytes).

Only URLs whose host the operator allows are accepted (`check_url`; the request is refused
with 400 otherwise), redirects are not followed, and a 2xx answer is a success. Other
answers and network errors are retried, `attempts` times in all, after `backoff_s`
seconds doubled at each attempt (plus up to 10% jitter; longer when the receiver sends a
Retry-After), except 410 Gone, which ends the delivery. Deliveries run as asyncio tasks on
the event loop (httpx.AsyncClient): they never block the loop or the engine; those still
pending when the server stops are dropped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Optional

import httpx

from ..errors import bad_request

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)  # the spec: at least 24 bytes (192 bits), at most 512 bits
TIMEOUT_S = 15.0  # the spec recommends 15 to 30 s
MAX_DELAY_S = 3600.0
MAX_URL = 2048


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if not SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1]:
        raise ValueError(f"a webhook secret holds {SECRET_BYTES[0]} to {SECRET_BYTES[1]} bytes, not {len(key)}")
    return key


def new_secret() -> str:
    """A fresh secret in the `whsec_` form (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def payload(event_type: str, data: dict[str, Any], at: float) -> bytes:
    """The body of a delivery, minified JSON (the bytes signed are the bytes sent)."""
    when = datetime.fromtimestamp(at, timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": when, "data": data}, separators=(",", ":")).encode()


def parse_hosts(hosts: str) -> frozenset[str]:
    """The allowed hosts of a comma-separated setting, lower case, IPv6 without brackets."""
    return frozenset(h.strip().lower().strip("[]") for h in hosts.split(",") if h.strip())


def check_url(url: str, hosts: Iterable[str]) -> str:
    """The webhook URL of a request if it may be used: http(s), no credentials, an allowed
    host; otherwise a 400 naming `webhook_url`."""
    allowed = frozenset(hosts)
    if not allowed:
        raise bad_request("webhook_url", "This server sends no webhooks (no host is allowed); poll the job or "
                                         "follow its events instead.", "webhooks_disabled")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise bad_request("webhook_url", "'webhook_url' is not a valid URL.") from None
    if len(url) > MAX_URL or parsed.scheme not in ("http", "https") or not parsed.host:
        raise bad_request("webhook_url", f"'webhook_url' must be an http or https URL of at most {MAX_URL} "
                                         "characters.")
    if parsed.userinfo:
        raise bad_request("webhook_url", "'webhook_url' must not carry credentials.")
    if parsed.host.lower() not in allowed:
        raise bad_request("webhook_url", f"Webhooks to host '{parsed.host}' are not allowed on this server.",
                          "webhook_host_not_allowed")
    return url


class WebhookSender:
    """Signs and delivers webhooks in the background, retrying with exponential backoff.
    `on_outcome` hears "delivered", "retried" (an attempt failed, another follows) or
    "failed" (the last attempt failed, or 410 Gone) for every attempt."""

    def __init__(self, secret: str, hosts: Iterable[str], attempts: int = 5, backoff_s: float = 5.0,
                 on_outcome: Optional[Callable[[str], None]] = None, timeout_s: float = TIMEOUT_S):
        self.key, self.hosts = secret_key(secret), frozenset(hosts)
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self.on_outcome = on_outcome
        self._client: Optional[httpx.AsyncClient] = None
        self._tasks: set[asyncio.Task] = set()

    def send(self, url: str, event_type: str, data: dict[str, Any]) -> str:
        """Start delivering one event to `url` (from the event loop); returns its webhook id."""
        msg_id = "msg_" + secrets.token_urlsafe(18)
        task = asyncio.create_task(self.deliver(url, msg_id, payload(event_type, data, time.time())))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return msg_id

    async def deliver(self, url: str, msg_id: str, body: bytes) -> bool:
        """Try the delivery up to `attempts` times; True once a receiver answered 2xx."""
        for attempt in range(1, self.attempts + 1):
            status, retry_after = await self._attempt(url, msg_id, body)
            if 200 <= status < 300:
                self._report("delivered")
                return True
            last = attempt == self.attempts or status == 410
            log.warning("webhook %s to %s: attempt %d of %d failed (%s)%s", msg_id, url, attempt, self.attempts,
                        status or "no answer", "" if not last else "; giving up")
            if last:
                self._report("failed")
                return False
            self._report("retried")
            await asyncio.sleep(self._delay(attempt, retry_after))
        return False

    async def _attempt(self, url: str, msg_id: str, body: bytes) -> tuple[int, Optional[float]]:
        """One POST: (status, Retry-After seconds or None); status 0 when nothing answered."""
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(self.key, msg_id, timestamp, body)}
        try:
            answer = await self.client().post(url, content=body, headers=headers)
        except httpx.HTTPError as err:
            log.debug("webhook %s to %s: %r", msg_id, url, err)
            return 0, None
        retry_after = answer.headers.get("retry-after", "")
        return answer.status_code, float(retry_after) if retry_after.isdigit() else None

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds before attempt + 1: backoff_s * 2^(attempt-1), jittered, at least Retry-After."""
        delay = self.backoff_s * 2 ** (attempt - 1)
        delay += random.uniform(0, delay / 10)
        return min(max(delay, retry_after or 0.0), MAX_DELAY_S)

    def client(self) -> httpx.AsyncClient:
        """The shared client (made on first use, on the event loop); redirects not followed."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        return self._client

    def _report(self, outcome: str) -> None:
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:  # noqa: BLE001 - metrics never break a delivery
                log.debug("webhook outcome report failed", exc_info=True)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def close(self, grace_s: float = 0.0) -> None:
        """Give pending deliveries up to `grace_s` seconds, drop the rest, close the client."""
        if self._tasks and grace_s > 0:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        if self._tasks:
            log.warning("dropping %d pending webhook deliveries", len(self._tasks))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
