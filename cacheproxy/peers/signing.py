"""Peer trust: HMACs with the cluster's shared secret, on requests and on answers.

A request is signed over its method, its target node, its path and the time: a
stale signature is refused, and one made for one node is refused by every other.
An answer that is not addressed by digest (what a tag names) is signed too, over
the request's own signature and the answer's fields, so a node that never knew the
secret cannot make a node serve its image. Content addressed by digest needs no
signature: it is verified against its digest. Upstream credentials never travel
between peers: a peer asks the owner for bytes, the owner uses its own login.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

from ..numbers import parse_digits

HEADER = "X-Cacheproxy-Peer"
ANSWER_HEADER = "X-Cacheproxy-Peer-Answer"
# Clocks of nodes in one cluster agree to well within this.
MAX_SKEW = 120.0


def _mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def _fresh(ts: str, clock: Callable[[], float]) -> bool:
    # ASCII digits: "\u00b2".isdigit() is true, and int() would raise on it.
    seconds = parse_digits(ts)
    return seconds is not None and abs(clock() - seconds) <= MAX_SKEW


def sign(secret: bytes, method: str, path_qs: str, target: str, now: float | None = None) -> str:
    """The signature of a request to the node ``target`` (its URL as members know it)."""
    ts = str(int(time.time() if now is None else now))
    return f"{ts}.{_mac(secret, 'request', method, target, path_qs, ts)}"


def verify(
    secret: bytes,
    method: str,
    path_qs: str,
    target: str,
    value: str | None,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Whether ``value`` signs this request to this node (``target``), recently."""
    if not value or "." not in value:
        return False
    ts, _, mac = value.partition(".")
    if not _fresh(ts, clock):
        return False
    return hmac.compare_digest(_mac(secret, "request", method, target, path_qs, ts), mac)


def sign_answer(
    secret: bytes, request: str, fields: Sequence[str], now: float | None = None
) -> str:
    """The signature of an answer's ``fields`` to the request signed ``request``."""
    ts = str(int(time.time() if now is None else now))
    return f"{ts}.{_mac(secret, 'answer', request, *fields, ts)}"


def verify_answer(
    secret: bytes,
    request: str,
    fields: Sequence[str],
    value: str | None,
    clock: Callable[[], float] = time.time,
) -> bool:
    if not value or "." not in value or not request:
        return False
    ts, _, mac = value.partition(".")
    if not _fresh(ts, clock):
        return False
    return hmac.compare_digest(_mac(secret, "answer", request, *fields, ts), mac)
