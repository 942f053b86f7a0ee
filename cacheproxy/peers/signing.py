"""Peer request signing: an HMAC over method, path and time with a shared secret.

Only a request with a valid signature may use the peer endpoints; a stale or
replayed-from-long-ago signature is refused. Upstream credentials never travel
between peers: a peer asks the owner for bytes, the owner uses its own login.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

HEADER = "X-Cacheproxy-Peer"
# Clocks of nodes in one cluster agree to well within this.
MAX_SKEW = 120.0


def sign(secret: bytes, method: str, path_qs: str, now: float | None = None) -> str:
    ts = str(int(time.time() if now is None else now))
    mac = hmac.new(secret, f"{method}\n{path_qs}\n{ts}".encode(), hashlib.sha256).hexdigest()
    return f"{ts}.{mac}"


def verify(
    secret: bytes,
    method: str,
    path_qs: str,
    value: str | None,
    clock: Callable[[], float] = time.time,
) -> bool:
    if not value or "." not in value:
        return False
    ts, _, mac = value.partition(".")
    if not ts.isdigit() or abs(clock() - int(ts)) > MAX_SKEW:
        return False
    expected = hmac.new(secret, f"{method}\n{path_qs}\n{ts}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, mac)
