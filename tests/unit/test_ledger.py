"""The ledger: counting in memory, flushing in the background, surviving restarts."""

from __future__ import annotations

import calendar
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cacheproxy.savings import db
from cacheproxy.savings.db import Counts
from cacheproxy.savings.ledger import Ledger
from tests.support.waiting import eventually

HUB = "docker.io"


def noon_utc(day: str) -> float:
    return float(calendar.timegm(dt.datetime.fromisoformat(day + "T12:00:00").timetuple()))


class DayClock:
    """A settable clock, at noon UTC of a given day."""

    def __init__(self, day: str) -> None:
        self.now = noon_utc(day)

    def __call__(self) -> float:
        return self.now

    def set(self, day: str) -> None:
        self.now = noon_utc(day)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    led = Ledger(tmp_path / "ledger.db", flush_interval=3600, clock=DayClock("2026-03-14"))
    await led.start()
    try:
        yield led
    finally:
        await led.close()


def stored(path: Path) -> dict[tuple[str, str], Counts]:
    """What another process would read now."""
    conn = db.open_reader(path)
    assert conn is not None
    try:
        return db.by_repo(conn)
    finally:
        conn.close()


def one_pull(led: Ledger, repo: str = "library/alpine", cached: bool = False) -> None:
    source = "cache" if cached else "upstream"
    led.served(HUB, repo, "manifest", source, 1000)
    led.served(HUB, repo, "blob", source, 50_000)
    if not cached:
        led.fetched(HUB, repo, "manifest", 1000)
        led.fetched(HUB, repo, "blob", 50_000)
        led.stored(HUB, repo, 50_000)


async def test_counts_by_source_kind_and_pull(ledger: Ledger) -> None:
    one_pull(ledger)
    one_pull(ledger, cached=True)
    ledger.served(HUB, "library/alpine", "blob", "peer", 7)
    c = ledger.totals()[HUB]
    assert (c.served_upstream, c.served_cache, c.served_peer) == (51_000, 51_000, 7)
    assert (c.blobs_served, c.manifests_served, c.pulls_avoided) == (3, 2, 1)
    assert (c.upstream_requests, c.upstream_bytes) == (2, 51_000)
    assert (c.stored_blobs, c.stored_bytes) == (1, 50_000)
    assert c.avoided == 51_007 and c.served == 102_007


async def test_nothing_is_written_until_a_flush_then_everything_is(ledger: Ledger) -> None:
    one_pull(ledger)
    assert stored(ledger.path) == {}
    await ledger.flush()
    assert stored(ledger.path)[(HUB, "library/alpine")] == ledger.totals()[HUB]
    # A second flush adds to the same row (the upsert adds, never overwrites).
    one_pull(ledger, cached=True)
    await ledger.flush()
    assert stored(ledger.path)[(HUB, "library/alpine")].served == 102_000


async def test_the_background_task_flushes_within_the_interval(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.db", flush_interval=0.05)
    await led.start()
    try:
        one_pull(led)
        await eventually(lambda: stored(led.path), timeout=5, what="the pull on disk")
        # Written without close: what a crash right now would leave behind.
        assert stored(led.path)[(HUB, "library/alpine")].served == 51_000
    finally:
        await led.close()


async def test_restart_keeps_the_totals(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    clock = DayClock("2026-03-14")
    first = Ledger(path, clock=clock)
    await first.start()
    one_pull(first)
    one_pull(first, repo="library/redis", cached=True)
    await first.close()

    again = Ledger(path, clock=clock)
    await again.start()
    try:
        assert again.totals()[HUB].served == 102_000
        assert again.month_totals() == ("2026-03", {HUB: again.totals()[HUB]})
        one_pull(again)
        await again.flush()
        assert again.totals()[HUB].served == 153_000
        rows = stored(path)
        assert rows[(HUB, "library/alpine")].served == 102_000
        assert rows[(HUB, "library/redis")].pulls_avoided == 1
    finally:
        await again.close()


async def test_days_and_months_are_utc_calendar_days(tmp_path: Path) -> None:
    clock = DayClock("2026-03-31")
    led = Ledger(tmp_path / "ledger.db", clock=clock)
    await led.start()
    try:
        one_pull(led)
        clock.set("2026-04-01")
        one_pull(led, cached=True)
        month, totals = led.month_totals()
        # The month gauge starts again with April; the all-time totals do not.
        assert month == "2026-04" and totals[HUB].served_upstream == 0
        assert totals[HUB].served_cache == 51_000
        assert led.totals()[HUB].served == 102_000
        await led.flush()
        conn = db.open_reader(led.path)
        assert conn is not None
        days = db.by_day(conn)
        conn.close()
        assert sorted(days) == [("2026-03-31", HUB), ("2026-04-01", HUB)]
    finally:
        await led.close()


async def test_a_failed_write_keeps_the_counts_for_the_next_flush(ledger: Ledger) -> None:
    one_pull(ledger)
    conn = ledger._conn
    assert conn is not None
    broken = sqlite3.connect(":memory:", check_same_thread=False)
    broken.close()
    ledger._conn = broken  # every statement now fails
    with pytest.raises(sqlite3.ProgrammingError):
        await ledger.flush()
    one_pull(ledger, cached=True)
    ledger._conn = conn
    await ledger.flush()
    row = stored(ledger.path)[(HUB, "library/alpine")]
    assert (row.served_upstream, row.served_cache, row.upstream_requests) == (51_000, 51_000, 2)


async def test_close_flushes_and_is_idempotent(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.db", flush_interval=3600)
    await led.start()
    one_pull(led)
    await led.close()
    await led.close()
    assert stored(led.path)[(HUB, "library/alpine")].served == 51_000


def test_report_reads_nothing_when_there_is_no_ledger(tmp_path: Path) -> None:
    assert db.open_reader(tmp_path / "ledger.db") is None
    assert not (tmp_path / "ledger.db").exists()
