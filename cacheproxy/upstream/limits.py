"""What an upstream says about its limits: when to retry, and how many pulls are left.

Pure: ``Retry-After`` (RFC 9110 section 10.2.3) and Docker Hub-style ``ratelimit-*``
headers, and the bounded retry policy the client follows.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Mapping
from dataclasses import dataclass

from ..numbers import parse_digits

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF = 0.5
BACKOFF_MAX = 8.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries: at most ``attempts`` more, all within ``budget`` seconds."""

    attempts: int = 3
    budget: float = 10.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """The upstream's ``Retry-After`` when it gives one, else exponential backoff."""
        wait = parse_retry_after(retry_after)
        if wait is not None:
            return wait
        backoff: float = BACKOFF * 2.0**attempt
        return min(backoff, BACKOFF_MAX)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from ``Retry-After``: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip(" \t")
    delay = parse_digits(value)
    if delay is not None:
        return float(delay)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds: float = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    return max(0.0, seconds)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Docker Hub-style ``ratelimit-*`` headers, as last seen."""

    limit: int
    remaining: int
    window: int | None
    seen_at: float


def parse_rate_limit(headers: Mapping[str, str], now: float) -> RateLimit | None:
    """``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 76;w=21600``."""
    raw_limit, raw_remaining = headers.get("ratelimit-limit"), headers.get("ratelimit-remaining")
    if raw_limit is None or raw_remaining is None:
        return None

    def parts(value: str) -> tuple[int, int | None]:
        number, _, params = value.partition(";")
        window = None
        for param in params.split(";"):
            key, _, val = param.strip().partition("=")
            if key == "w":
                window = parse_digits(val)
        count = parse_digits(number.strip(" \t"))
        if count is None:
            raise ValueError(number)
        return count, window

    try:
        limit, window = parts(raw_limit)
        remaining, _ = parts(raw_remaining)
    except ValueError:
        return None
    return RateLimit(limit, remaining, window, now)
