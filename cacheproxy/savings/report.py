"""What the cache saved over a range of days: bytes, pulls and dollars.

Dollars are priced per upstream and per UTC calendar month, on the month's
cumulative volume: for each day, the saving so far this month is
``cost(fetched + avoided) - cost(fetched)`` (tiers.saved), and a range's saving is
the difference of that running figure between its last day and the day before its
first. A range that starts mid-month is therefore priced at the tier position the
month had really reached, and a month that crosses a band boundary is priced in
parts. A repository's share of an upstream's saving is in proportion to the bytes
it avoided.

``build`` is pure; ``read`` does the (blocking) database reads for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from ..config import Config, UpstreamConfig
from ..layout import CacheLayout
from ..registries import ecr_host
from . import db
from .db import Counts
from .prices import Price, Pricing, StorePrice
from .shared import shared_price, store_json
from .tiers import ZERO, cost, saved


@dataclass
class Line:
    """Counters and dollars for one upstream, one repository, one day, or the total."""

    counts: Counts = field(default_factory=Counts)
    saved_usd: Decimal = ZERO
    # What the upstream transfers the proxy did make cost (upstreams only).
    cost_usd: Decimal = ZERO
    # The shared tier: the part of saved_usd its bytes made (priced at the upstream's
    # rates), and what its requests and transfers cost.
    shared_saved_usd: Decimal = ZERO
    shared_cost_usd: Decimal = ZERO

    def add(self, other: Priced, counts: Counts) -> None:
        self.counts.add(counts)
        self.saved_usd += other.saved
        self.cost_usd += other.cost
        self.shared_saved_usd += other.shared_saved
        self.shared_cost_usd += other.shared_cost

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        return {
            "bytes_served": c.served,
            "bytes_from_cache": c.served_cache,
            "bytes_from_peers": c.served_peer,
            "bytes_from_shared": c.served_shared,
            "bytes_from_upstream": c.served_upstream,
            "bytes_avoided": c.avoided,
            "hit_ratio": round(c.hit_ratio, 6),
            "blobs_served": c.blobs_served,
            "manifests_served": c.manifests_served,
            "pulls_avoided": c.pulls_avoided,
            "upstream_requests": c.upstream_requests,
            "upstream_bytes": c.upstream_bytes,
            "blobs_stored": c.stored_blobs,
            "bytes_stored": c.stored_bytes,
            "saved_usd": usd(self.saved_usd),
            "cost_usd": usd(self.cost_usd),
            "shared_get_requests": c.shared_get_requests,
            "shared_get_bytes": c.shared_get_bytes,
            "shared_put_requests": c.shared_put_requests,
            "shared_put_bytes": c.shared_put_bytes,
            "shared_saved_usd": usd(self.shared_saved_usd),
            "shared_cost_usd": usd(self.shared_cost_usd),
        }


class Priced(NamedTuple):
    """One day's dollars for one upstream."""

    saved: Decimal
    cost: Decimal
    shared_saved: Decimal
    shared_cost: Decimal


@dataclass
class UpstreamLine(Line):
    """An upstream's line, with the price that was applied to it."""

    name: str = ""
    price: Price | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"upstream": self.name, **super().to_json()}
        if self.price is not None:
            out["pricing"] = price_json(self.price)
            limit = self.price.limit
            if limit is not None:
                out["limit_windows_avoided"] = round(self.counts.pulls_avoided / limit.pulls, 3)
        return out


@dataclass
class Report:
    """The savings over [since, until] (UTC days, inclusive)."""

    since: dt.date
    until: dt.date
    origin: str
    total: Line
    upstreams: list[UpstreamLine]
    repositories: list[tuple[str, str, Line]]
    days: list[tuple[dt.date, Line]]
    # The shared tier's store and prices (None: no [shared] and nothing counted), and
    # what storing the bytes written in the range costs per month they are kept.
    store: StorePrice | None = None
    storage_usd_month: Decimal = ZERO

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "pricing": self.origin,
            "totals": self.total.to_json(),
            "shared_tier": None
            if self.store is None
            else store_json(self.store, self.storage_usd_month),
            "upstreams": [u.to_json() for u in self.upstreams],
            "repositories": [
                {"upstream": up, "repository": repo, **line.to_json()}
                for up, repo, line in self.repositories
            ],
            "days": [{"day": d.isoformat(), **line.to_json()} for d, line in self.days],
        }


def usd(value: Decimal) -> float:
    """Dollars for JSON: a number, to a hundredth of a cent."""
    return float(value.quantize(Decimal("0.0001")))


def price_json(price: Price) -> dict[str, Any]:
    """Where an upstream's price comes from, for humans and machines."""
    return {
        "registry": price.registry.title,
        "network_path": price.network_path,
        "region": price.region,
        "charges": [
            {
                "id": a.charge.id,
                "title": a.charge.title,
                "region": a.region,
                "region_fallback": a.fallback,
                "source": a.charge.source,
                "read": a.charge.read,
            }
            for a in price.charges
        ],
        "limit": None
        if price.limit is None
        else {
            "pulls": price.limit.pulls,
            "window_seconds": price.limit.window_seconds,
            "per": price.limit.per,
            "title": price.limit.title,
            "source": price.limit.source,
            "read": price.limit.read,
        },
    }


def parse_day(text: str, *, end: bool = False) -> dt.date:
    """``YYYY-MM-DD``, or ``YYYY-MM`` (its first day, or its last with ``end``)."""
    try:
        if len(text) == 7:
            first = dt.date.fromisoformat(text + "-01")
            return _month_end(first) if end else first
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a date YYYY-MM-DD or a month YYYY-MM, got {text!r}") from None


def _month_end(day: dt.date) -> dt.date:
    nxt = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return nxt - dt.timedelta(days=1)


def upstream_settings(config: Config, name: str) -> UpstreamConfig:
    """The settings an upstream in the ledger has now (defaults if no longer configured)."""
    try:
        return config.upstream(name)
    except KeyError:
        ecr = ecr_host(name)
        return UpstreamConfig(name, f"https://{name}", region=ecr.region if ecr else None)


def build(
    since: dt.date,
    until: dt.date,
    daily: Mapping[tuple[str, str], Counts],
    repos: Mapping[tuple[str, str], Counts],
    prices: Mapping[str, Price],
    origin: str = "",
    top: int = 10,
    store: StorePrice | None = None,
) -> Report:
    """The report from per-(day, upstream) rows (which must reach back to the first of
    ``since``'s month, for the tiers) and per-(upstream, repository) rows over the range."""
    total = Line()
    by_day: dict[dt.date, Line] = {}
    lines: dict[str, UpstreamLine] = {}
    for name in sorted({up for _, up in daily}):
        price = prices[name]
        line = UpstreamLine(name=name, price=price)
        rows = sorted((dt.date.fromisoformat(d), c) for (d, up), c in daily.items() if up == name)
        for day, priced, counts in _priced_days(rows, price, since, until, store):
            # Only upstreams with traffic in the range get a line (rows before
            # ``since`` are there for the month's tier position).
            lines[name] = line
            line.add(priced, counts)
            by_day.setdefault(day, Line()).add(priced, counts)
    for line in lines.values():
        total.add(
            Priced(line.saved_usd, line.cost_usd, line.shared_saved_usd, line.shared_cost_usd),
            line.counts,
        )

    repo_lines = []
    for (up, repo), counts in repos.items():
        parent = lines.get(up)
        share = ZERO
        if parent is not None and parent.counts.avoided:
            share = parent.saved_usd * counts.avoided / parent.counts.avoided
        repo_lines.append((up, repo, Line(counts, share)))
    repo_lines.sort(key=lambda r: (-r[2].counts.avoided, -r[2].counts.served, r[0], r[1]))

    upstream_list = sorted(lines.values(), key=lambda u: (-u.counts.served, u.name))
    days = sorted(by_day.items())
    storage = ZERO
    if store is not None and store.storage is not None:
        storage = cost(store.storage.schedule, total.counts.shared_put_bytes)
    return Report(
        since, until, origin, total, upstream_list, repo_lines[:top], days, store, storage
    )


def _priced_days(
    rows: Iterable[tuple[dt.date, Counts]],
    price: Price,
    since: dt.date,
    until: dt.date,
    store: StorePrice | None = None,
) -> Iterable[tuple[dt.date, Priced, Counts]]:
    """(day, dollars, counts) for each day in [since, until] that has counts.

    Running month totals start again on each month's first day; days before
    ``since`` only move the month's tier position. The shared tier's bytes are the
    top of what was avoided, priced at the month's margin; its transfer is tiered
    on the month's bytes read from it, its requests are flat.
    """
    month = None
    fetched = avoided = from_shared = read = 0
    prev = Priced(ZERO, ZERO, ZERO, ZERO)
    schedules = price.schedules
    transfer = store.schedules if store is not None else ()
    for day, counts in rows:
        if day > until:
            break
        if (day.year, day.month) != month:
            month = (day.year, day.month)
            fetched = avoided = from_shared = read = 0
            prev = Priced(ZERO, ZERO, ZERO, ZERO)
        fetched += counts.upstream_bytes
        avoided += counts.avoided
        from_shared += counts.served_shared
        read += counts.shared_get_bytes
        now = Priced(
            saved(schedules, fetched, avoided),
            sum((cost(s, fetched) for s in schedules), ZERO),
            saved(schedules, fetched + avoided - from_shared, from_shared),
            sum((cost(s, read) for s in transfer), ZERO),
        )
        if day >= since:
            requests = ZERO
            if store is not None:
                requests = store.store.requests_usd(
                    counts.shared_get_requests, counts.shared_put_requests
                )
            yield (
                day,
                Priced(
                    now.saved - prev.saved,
                    now.cost - prev.cost,
                    now.shared_saved - prev.shared_saved,
                    now.shared_cost - prev.shared_cost + requests,
                ),
                counts,
            )
        prev = now


def read(
    config: Config,
    pricing: Pricing,
    since: dt.date,
    until: dt.date,
    top: int = 10,
    path: Path | None = None,
) -> Report:
    """Read the ledger under the config's cache directory and build the report.

    Blocks (SQLite): call it from a thread on an event loop. Safe while the server
    runs: the ledger is in WAL mode and this only reads.
    """
    path = path or CacheLayout(config.cache_dir).ledger
    conn = db.open_reader(path)
    daily: dict[tuple[str, str], Counts] = {}
    repos: dict[tuple[str, str], Counts] = {}
    if conn is not None:
        try:
            first = since.replace(day=1).isoformat()
            daily = db.by_day(conn, first, until.isoformat())
            repos = db.by_repo(conn, since.isoformat(), until.isoformat())
        finally:
            conn.close()
    names = {up for _, up in daily}
    prices = {name: pricing.price(upstream_settings(config, name)) for name in names}
    return build(
        since,
        until,
        daily,
        repos,
        prices,
        pricing.origin,
        top,
        shared_price(config, pricing, daily),
    )


def repositories(path: Path, since: str, until: str) -> list[tuple[str, str]]:
    """Every (upstream, repository) in the ledger at ``path`` for [since, until] (blocks)."""
    conn = db.open_reader(path)
    if conn is None:
        return []
    try:
        return db.repositories(conn, since, until)
    finally:
        conn.close()
