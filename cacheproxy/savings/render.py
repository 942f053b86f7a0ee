"""A savings report as text: an aligned table for people, CSV for spreadsheets."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from .report import Line, Report, UpstreamLine

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int) -> str:
    """Binary units, the ones the price tables bill in (1 GB = 2**30 bytes)."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _pulls(line: Line, upstream: UpstreamLine | None) -> str:
    text = f"{line.counts.pulls_avoided:,}"
    limit = upstream.price.limit if upstream is not None and upstream.price else None
    if limit is not None:
        # How many windows' worth of the limit the cache kept for other pulls.
        text += f" ({line.counts.pulls_avoided / limit.pulls:,.1f} x {limit.describe()})"
    return text


def _row(label: Sequence[str], line: Line, upstream: UpstreamLine | None) -> list[str]:
    c = line.counts
    return [
        *label,
        human_bytes(c.served),
        human_bytes(c.served_cache),
        human_bytes(c.served_peer),
        human_bytes(c.served_shared),
        human_bytes(c.served_upstream),
        f"{c.hit_ratio:.1%}",
        human_bytes(c.avoided),
        f"{line.saved_usd:,.2f}",
        _pulls(line, upstream),
    ]


_HEAD = [
    "served",
    "cache",
    "peers",
    "shared",
    "upstream",
    "hit",
    "avoided",
    "saved $",
    "pulls avoided",
]


def _table(rows: list[list[str]], left: int) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            cell.ljust(widths[i]) if i < left or i == len(r) - 1 else cell.rjust(widths[i])
            for i, cell in enumerate(r)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def table(report: Report, ledger: str = "") -> str:
    """The report as aligned text: upstreams, top repositories, and the prices used."""
    title = f"cacheproxy savings {report.since} .. {report.until} (UTC)"
    parts = [title + (f", ledger {ledger}" if ledger else "")]
    rows = [["upstream", *_HEAD]]
    rows += [_row([u.name], u, u) for u in report.upstreams]
    rows.append(_row(["total"], report.total, None))
    parts += ["", _table(rows, 1)]
    if report.repositories:
        by_name = {u.name: u for u in report.upstreams}
        repo_rows = [["upstream", "repository", *_HEAD]]
        repo_rows += [
            _row([up, repo], line, by_name.get(up)) for up, repo, line in report.repositories
        ]
        parts += ["", "top repositories", _table(repo_rows, 2)]
    if report.store is not None:
        parts += ["", *_shared_text(report)]
    parts += ["", f"prices ({report.origin}):"]
    for u in report.upstreams:
        parts.append(f"  {u.name}: {_price_text(u)}")
    if not report.upstreams:
        parts.append("  (nothing served in this range)")
    return "\n".join(parts) + "\n"


def _shared_text(report: Report) -> list[str]:
    """What the shared tier saved and what it cost, with the store's prices."""
    price = report.store
    assert price is not None
    t, c = report.total, report.total.counts
    where = price.network_path + (f", {price.region}" if price.region else "")
    net = t.shared_saved_usd - t.shared_cost_usd
    lines = [
        f"shared tier ({price.store.title} via {where})",
        f"  served from the bucket  {human_bytes(c.served_shared)}"
        f"   saved {t.shared_saved_usd:,.4f} $ at the upstreams' prices",
        f"  requests                {c.shared_get_requests:,} GET/HEAD,"
        f" {c.shared_put_requests:,} PUT/POST/LIST",
        f"  transfer                {human_bytes(c.shared_get_bytes)} read,"
        f" {human_bytes(c.shared_put_bytes)} written",
        f"  cost                    {t.shared_cost_usd:,.4f} $ (requests and transfer);"
        f" net {net:,.4f} $",
        f"  storage                 {report.storage_usd_month:,.4f} $ a month for what was"
        " written in the range, while it is kept",
        f"  prices: {price.store.source}, read {price.store.read}",
    ]
    return lines


def _price_text(u: UpstreamLine) -> str:
    price = u.price
    if price is None:
        return "no price"
    where = price.network_path + (f", {price.region}" if price.region else "")
    bits = [f"{price.registry.title} via {where}"]
    if not price.charges:
        bits.append("no per-byte charge")
    for a in price.charges:
        text = a.charge.title
        if a.region:
            # Say so when the upstream's region has no entry and another's was used.
            text += f" [{a.region} rates" + (f"; none for {price.region}]" if a.fallback else "]")
        bits.append(f"{text} ({a.charge.source}, read {a.charge.read})")
    if price.limit is not None:
        lim = price.limit
        bits.append(
            f"pull limit {lim.describe()} per {lim.per}, {lim.title}"
            f" ({lim.source}, read {lim.read})"
        )
    return "; ".join(bits)


CSV_FIELDS = [
    "scope",
    "day",
    "upstream",
    "repository",
    "bytes_served",
    "bytes_from_cache",
    "bytes_from_peers",
    "bytes_from_shared",
    "bytes_from_upstream",
    "hit_ratio",
    "bytes_avoided",
    "saved_usd",
    "cost_usd",
    "pulls_avoided",
    "blobs_served",
    "manifests_served",
    "upstream_requests",
    "upstream_bytes",
    "bytes_stored",
    "shared_get_requests",
    "shared_get_bytes",
    "shared_put_requests",
    "shared_put_bytes",
    "shared_saved_usd",
    "shared_cost_usd",
]


def to_csv(report: Report) -> str:
    """One row per upstream, per top repository and per day, and the total."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for u in report.upstreams:
        writer.writerow({"scope": "upstream", **u.to_json()})
    for up, repo, line in report.repositories:
        writer.writerow(
            {"scope": "repository", "upstream": up, "repository": repo, **line.to_json()}
        )
    for day, line in report.days:
        writer.writerow({"scope": "day", "day": day.isoformat(), **line.to_json()})
    writer.writerow({"scope": "total", **report.total.to_json()})
    return buf.getvalue()
