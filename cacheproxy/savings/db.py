"""The ledger's durable form: one SQLite table of daily counters, added to in place.

A row per (UTC day, upstream, repository); every flush adds its counts to the row
with an upsert, so a flush is one short write transaction no matter how many
requests it covers. The database runs in WAL mode: ``cacheproxy report`` (another
process) reads it while the server writes. Every function here blocks: callers on
the event loop run them in a thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from ..store.private import make_dirs, touch

# 1: the first table; 2: the shared tier's columns (added in place to a ledger of 1).
SCHEMA_VERSION = 2


@dataclass(slots=True)
class Counts:
    """Counters for one (day, upstream, repository), or any sum of them."""

    # Bytes clients got, by where they came from (accounting.Source).
    served_cache: int = 0
    served_peer: int = 0
    served_upstream: int = 0
    # GET answers with a body.
    blobs_served: int = 0
    manifests_served: int = 0
    # Manifest GETs answered without an upstream GET: what Docker Hub counts as pulls.
    pulls_avoided: int = 0
    # Upstream GETs the proxy made (blob fills, manifest fetches) and their bytes.
    upstream_requests: int = 0
    upstream_bytes: int = 0
    # Verified blobs added to the cache.
    stored_blobs: int = 0
    stored_bytes: int = 0
    # Bytes clients got from the shared tier (a bucket other proxies fill too).
    served_shared: int = 0
    # Requests to the shared tier as S3 bills them (GET/HEAD; PUT/POST/LIST), and
    # the bytes they read and wrote.
    shared_get_requests: int = 0
    shared_get_bytes: int = 0
    shared_put_requests: int = 0
    shared_put_bytes: int = 0

    def add(self, other: Counts) -> None:
        for name in FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def values(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    @property
    def served(self) -> int:
        """Every byte clients got."""
        return self.served_cache + self.served_peer + self.served_shared + self.served_upstream

    @property
    def avoided(self) -> int:
        """Bytes clients got without this request causing an upstream transfer."""
        return self.served_cache + self.served_peer + self.served_shared

    @property
    def hit_ratio(self) -> float:
        """Share of served bytes that did not come from upstream (0 when none served)."""
        return self.avoided / self.served if self.served else 0.0


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Counts))
# (day, upstream, repo) -> counts
Key = tuple[str, str, str]

_COLUMNS = ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in FIELDS)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    {_COLUMNS},
    PRIMARY KEY (day, upstream, repo)
) WITHOUT ROWID
"""
_UPSERT = (
    f"INSERT INTO usage (day, upstream, repo, {', '.join(FIELDS)}) "
    f"VALUES (?, ?, ?, {', '.join('?' for _ in FIELDS)}) "
    "ON CONFLICT (day, upstream, repo) DO UPDATE SET "
    + ", ".join(f"{name} = {name} + excluded.{name}" for name in FIELDS)
)


def _sums(conn: sqlite3.Connection) -> str:
    """The SELECT list summing every field; 0 for a column an older ledger lacks (a
    reader never changes the file: the server adds the columns when it opens it)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    return ", ".join(f"SUM({name})" if name in present else "0" for name in FIELDS)


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a ledger written by an older version lacks (in one transaction)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    for name in FIELDS:
        if name not in present:
            conn.execute(f"ALTER TABLE usage ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0")


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed, private: see store.private) the ledger for writing."""
    make_dirs(path.parent)
    touch(path)
    # One owner writes, from whichever worker thread runs its flush; flushes never
    # overlap (the Ledger serialises them), so the thread check is not needed.
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives a process crash; only a power loss can take
    # back the last transactions, which the ledger tolerates by design.
    conn.execute("PRAGMA synchronous=NORMAL")
    with conn:
        conn.execute(_SCHEMA)
        _migrate(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return conn


def open_reader(path: Path) -> sqlite3.Connection | None:
    """Open an existing ledger for reading (None if there is none yet).

    ``mode=rw`` rather than ``ro``: a WAL reader must be able to create the shared
    memory file when the server is not running, and the URI form never creates the
    database itself.
    """
    if not path.is_file():
        return None
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=10.0)
    conn.execute("PRAGMA query_only = ON")
    return conn


def add(conn: sqlite3.Connection, rows: Mapping[Key, Counts]) -> None:
    """Add ``rows`` to the stored counters in one transaction."""
    with conn:
        conn.executemany(_UPSERT, ((*key, *counts.values()) for key, counts in rows.items()))


def _counts(values: Iterable[int | None]) -> Counts:
    return Counts(*(int(v or 0) for v in values))


def _range(since: str | None, until: str | None) -> tuple[str, list[str]]:
    where, args = [], []
    if since is not None:
        where.append("day >= ?")
        args.append(since)
    if until is not None:
        where.append("day <= ?")
        args.append(until)
    return (" WHERE " + " AND ".join(where)) if where else "", args


def by_upstream(
    conn: sqlite3.Connection, since: str | None = None, until: str | None = None
) -> dict[str, Counts]:
    """Counters per upstream for days in [since, until] (ISO dates, inclusive)."""
    where, args = _range(since, until)
    sql = f"SELECT upstream, {_sums(conn)} FROM usage{where} GROUP BY upstream"
    return {row[0]: _counts(row[1:]) for row in conn.execute(sql, args)}


def by_day(
    conn: sqlite3.Connection, since: str | None = None, until: str | None = None
) -> dict[tuple[str, str], Counts]:
    """Counters per (day, upstream) for days in [since, until]."""
    where, args = _range(since, until)
    sql = f"SELECT day, upstream, {_sums(conn)} FROM usage{where} GROUP BY day, upstream"
    return {(row[0], row[1]): _counts(row[2:]) for row in conn.execute(sql, args)}


def by_repo(
    conn: sqlite3.Connection, since: str | None = None, until: str | None = None
) -> dict[tuple[str, str], Counts]:
    """Counters per (upstream, repository) for days in [since, until]."""
    where, args = _range(since, until)
    sql = f"SELECT upstream, repo, {_sums(conn)} FROM usage{where} GROUP BY upstream, repo"
    return {(row[0], row[1]): _counts(row[2:]) for row in conn.execute(sql, args)}


def repositories(
    conn: sqlite3.Connection, since: str | None = None, until: str | None = None
) -> list[tuple[str, str]]:
    """Every (upstream, repository) with counts on days in [since, until]."""
    where, args = _range(since, until)
    sql = f"SELECT DISTINCT upstream, repo FROM usage{where}"
    return [(row[0], row[1]) for row in conn.execute(sql, args)]
