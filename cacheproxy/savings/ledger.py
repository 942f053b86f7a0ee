"""The savings ledger: the Accounting the serving path reports to.

Each call adds to in-memory counters and returns: no I/O, no lock, nothing that
can wait. A background task owned by the ledger moves what accumulated to SQLite
every ``flush_interval`` seconds, in a worker thread, and once more on close; a
crash loses at most the last interval. Running totals per upstream (all time and
the current UTC month, seeded from the database at start) are kept alongside for
``/metrics``, which must answer without touching the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from ..accounting import Kind, Origin, SharedOp
from . import db
from .db import Counts, Key

log = logging.getLogger(__name__)


def utc_day(ts: float) -> str:
    """The UTC calendar day of a POSIX timestamp, ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


class Ledger:
    """Counts bytes, pulls and transfers per (upstream, repository, UTC day)."""

    def __init__(
        self,
        path: Path,
        *,
        flush_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        self.path = path
        self.flush_interval = flush_interval
        self._clock = clock
        self._pending: dict[Key, Counts] = {}
        self._totals: dict[str, Counts] = {}
        self._month = utc_day(clock())[:7]
        self._month_totals: dict[str, Counts] = {}
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        # Flushes come from the timer, from close and from readers that want
        # current numbers (the dashboard): one at a time on the one connection.
        self._flush_lock = asyncio.Lock()

    # --- Accounting ---------------------------------------------------------------

    def served(self, upstream: str, repo: str, kind: Kind, origin: Origin, nbytes: int) -> None:
        """A client got ``nbytes`` of a blob or manifest."""
        for c in self._counters(upstream, repo):
            if origin == "cache":
                c.served_cache += nbytes
            elif origin == "peer":
                c.served_peer += nbytes
            elif origin == "shared":
                c.served_shared += nbytes
            else:
                c.served_upstream += nbytes
            if kind == "blob":
                c.blobs_served += 1
            else:
                c.manifests_served += 1
                if origin != "upstream":
                    c.pulls_avoided += 1

    def fetched(self, upstream: str, repo: str, kind: Kind, nbytes: int) -> None:
        """One upstream GET brought ``nbytes``."""
        for c in self._counters(upstream, repo):
            c.upstream_requests += 1
            c.upstream_bytes += nbytes

    def stored(self, upstream: str, repo: str, nbytes: int) -> None:
        """A verified blob of ``nbytes`` joined the cache."""
        for c in self._counters(upstream, repo):
            c.stored_blobs += 1
            c.stored_bytes += nbytes

    def shared(self, upstream: str, repo: str, op: SharedOp, requests: int, nbytes: int) -> None:
        """Requests to the shared tier (as S3 bills them), or the bytes they moved."""
        for c in self._counters(upstream, repo):
            if op == "get":
                c.shared_get_requests += requests
                c.shared_get_bytes += nbytes
            else:
                c.shared_put_requests += requests
                c.shared_put_bytes += nbytes

    def _counters(self, upstream: str, repo: str) -> tuple[Counts, Counts, Counts]:
        day = utc_day(self._clock())
        if day[:7] != self._month:
            # A new month: its tiers start from zero, and so does its gauge.
            self._month, self._month_totals = day[:7], {}
        key = (day, upstream, repo)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = Counts()
        return (
            pending,
            self._totals.setdefault(upstream, Counts()),
            self._month_totals.setdefault(upstream, Counts()),
        )

    # --- reading ------------------------------------------------------------------

    def totals(self) -> dict[str, Counts]:
        """All-time counters per upstream, flushed or not."""
        return self._totals

    def month_totals(self) -> tuple[str, dict[str, Counts]]:
        """The current UTC month (``YYYY-MM``) and its counters per upstream so far."""
        month = utc_day(self._clock())[:7]
        return month, (self._month_totals if month == self._month else {})

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, load the totals so far, and start flushing."""
        conn = await asyncio.to_thread(db.connect, self.path)
        self._conn = conn
        totals = await asyncio.to_thread(db.by_upstream, conn)
        month_totals = await asyncio.to_thread(db.by_upstream, conn, f"{self._month}-01")
        # Counts made before start (none in practice) are kept on top of the stored ones.
        for upstream, counts in totals.items():
            counts.add(self._totals.get(upstream, Counts()))
            self._totals[upstream] = counts
        for upstream, counts in month_totals.items():
            counts.add(self._month_totals.get(upstream, Counts()))
            self._month_totals[upstream] = counts
        self._task = asyncio.create_task(self._run(), name="savings-ledger-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except (sqlite3.Error, OSError) as exc:
                # The counts stay pending (flush puts them back): retried next time.
                log.warning("savings ledger: cannot write %s: %s", self.path, exc)

    async def flush(self) -> None:
        """Write what accumulated since the last flush (in a worker thread)."""
        async with self._flush_lock:
            conn = self._conn
            if conn is None or not self._pending:
                return
            batch, self._pending = self._pending, {}
            write = asyncio.ensure_future(asyncio.to_thread(db.add, conn, batch))
            try:
                await asyncio.shield(write)
            finally:
                if not write.done():
                    # Cancelled mid-write: a thread cannot be stopped, and whether
                    # the batch is in the database decides what happens to it.
                    await asyncio.wait([write])
                if write.cancelled() or write.exception() is not None:
                    # Not written (the transaction rolled back): merge the batch back
                    # into what arrived meanwhile, so nothing is lost or counted twice.
                    for key, counts in batch.items():
                        counts.add(self._pending.get(key, Counts()))
                        self._pending[key] = counts

    async def close(self) -> None:
        """Stop the flush task, write the rest, close the database."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        conn = self._conn
        if conn is None:
            return
        try:
            await self.flush()
        finally:
            self._conn = None
            await asyncio.to_thread(conn.close)
