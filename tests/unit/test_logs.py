"""Warnings and errors are rate-limited per kind; what was held back is counted."""

from __future__ import annotations

import logging

from cacheproxy.logs import RateLimit


def record(msg: str, level: int = logging.WARNING, name: str = "cacheproxy.x") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (), None)


def test_a_burst_then_one_line_per_interval_with_the_held_back_count() -> None:
    now = [0.0]
    limit = RateLimit(burst=3, interval=10.0, clock=lambda: now[0])
    passed = [limit.filter(record("fill of %s failed")) for _ in range(100)]
    assert passed.count(True) == 3
    now[0] += 10.0
    line = record("fill of %s failed")
    assert limit.filter(line)
    assert "97 more like it held back" in str(line.msg)
    # Another kind of message has a budget of its own; INFO has a larger one, and
    # DEBUG passes untouched.
    assert limit.filter(record("upstream %s unreachable"))
    infos = [limit.filter(record("cached %s", logging.INFO)) for _ in range(100)]
    assert infos.count(True) == 15
    assert all(limit.filter(record("fill of %s failed", logging.DEBUG)) for _ in range(50))


def test_kinds_are_bounded() -> None:
    limit = RateLimit(burst=1, interval=10.0, clock=lambda: 0.0)
    for i in range(5000):
        limit.filter(record(f"made up {i}"))
    assert len(limit._kinds) <= 1024
