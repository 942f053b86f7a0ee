"""The results section of ``benchmarks/segments.py``: tables, targets and notes. Pure.

Rendered from the run's ``results.json`` as well, so a run's numbers can be written
again without pulling anything: ``python3 -m benchmarks.segments --render FILE``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MB = 1_000_000
DIRECT = "direct"
NGINX = "nginx"
#: The targets, as ratios within one run.
WALL_RATIO = 0.4
UPSTREAM_RATIO = 1.01
RSS_SPREAD_MB = 20.0
CPU_RATIO = 2.0
FIRST_BYTE_P99_MS = 100.0


@dataclass
class Measure:
    """One cold scenario on one system."""

    system: str  # "direct", "cacheproxy s4", "nginx"
    what: str  # "image" or "blob"
    clients: int
    wall: float
    content: int  # bytes of the content pulled (image: manifest + blobs)
    served: int  # bytes the clients received
    upstream: int  # body bytes the throttle sent
    upstream_gets: int
    ranged_gets: int
    cpu: float | None = None  # the proxy's CPU s (user+sys); None: no proxy
    rss_kib: int | None = None  # the proxy's peak RSS (VmHWM of a fresh process)
    first_bytes: list[float] = field(default_factory=list)  # each blob GET's
    client_first_bytes: list[float] = field(default_factory=list)  # each client's first
    failures: list[str] = field(default_factory=list)

    @property
    def cpu_per_gb(self) -> float | None:
        if self.cpu is None or not self.served:
            return None
        return self.cpu / (self.served / 1e9)

    @property
    def upstream_ratio(self) -> float:
        """Upstream bytes per copy of the content (1.00: each byte fetched once)."""
        return self.upstream / self.content if self.content else 0.0

    def first_byte_ms(self, q: float, of_clients: bool = False) -> float | None:
        """The ``q`` quantile of the first-byte times, in ms: of every blob GET, or
        (``of_clients``) of each client's first response."""
        times = self.client_first_bytes if of_clients else self.first_bytes
        if not times:
            return None
        ordered = sorted(times)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cacheproxy_label(segments: int) -> str:
    return f"cacheproxy s{segments}"


def _find(ms: Sequence[Measure], system: str, what: str, clients: int) -> Measure | None:
    for m in ms:
        if (m.system, m.what, m.clients) == (system, what, clients):
            return m
    return None


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(
    ms: Sequence[Measure], systems: Sequence[str], scenarios: Sequence[tuple[str, int]]
) -> str:
    """One row per scenario and metric, one column per system."""
    rows: list[tuple[str, Callable[[Measure], str]]]
    lines = ["| | " + " | ".join(systems) + " |", "|---|" + "---:|" * len(systems)]
    for what, clients in scenarios:
        who = f"{what}, {clients} client{'s' if clients > 1 else ''}"
        rows = [
            (f"cold {who}: wall s", lambda m: f"{m.wall:.2f}"),
            (f"cold {who}: upstream / content", lambda m: f"{m.upstream_ratio:.3f}"),
            (f"cold {who}: proxy CPU s per GB served", lambda m: _cell(m.cpu_per_gb, ".2f")),
            (
                f"cold {who}: proxy peak RSS MiB",
                lambda m: _cell(None if m.rss_kib is None else m.rss_kib / 1024, ".0f"),
            ),
        ]
        rows.append((f"cold {who}: first byte of each blob GET, p50 / p99 ms", _first_bytes))
        if what == "image":
            rows.append((f"cold {who}: each client's first byte, p50 / p99 ms", _client_first))
        for title, cell in rows:
            cells = []
            for system in systems:
                m = _find(ms, system, what, clients)
                cells.append("-" if m is None else ("FAILED" if m.failures else cell(m)))
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _first_bytes(m: Measure) -> str:
    p50, p99 = m.first_byte_ms(0.5), m.first_byte_ms(0.99)
    return f"{_cell(p50, '.0f')} / {_cell(p99, '.0f')}"


def _client_first(m: Measure) -> str:
    p50, p99 = m.first_byte_ms(0.5, True), m.first_byte_ms(0.99, True)
    return f"{_cell(p50, '.0f')} / {_cell(p99, '.0f')}"


def targets(ms: Sequence[Measure], segments: Sequence[int], default: int, many: int) -> str:
    """The targets as ratios in this run, for every segment count (the default marked)."""
    lines = [
        "| target | " + " | ".join(_seg_head(s, default) for s in segments) + " |",
        "|---|" + "---:|" * len(segments),
    ]
    rows: list[tuple[str, Callable[[int], tuple[float | None, bool]]]] = [
        (
            f"cold image, 1 client: wall / direct (<= {WALL_RATIO})",
            lambda s: _ratio(ms, cacheproxy_label(s), DIRECT, "image", 1, "wall", WALL_RATIO),
        ),
        (
            f"upstream bytes / content, worst scenario (<= {UPSTREAM_RATIO})",
            lambda s: _worst_upstream(ms, cacheproxy_label(s)),
        ),
        (
            f"peak RSS - the s1 run's, worst scenario, MB (<= {RSS_SPREAD_MB:.0f})",
            lambda s: _rss_spread(ms, cacheproxy_label(s), cacheproxy_label(1)),
        ),
        (
            f"proxy CPU per GB, {many} cold clients: / nginx (<= {CPU_RATIO})",
            lambda s: _ratio(ms, cacheproxy_label(s), NGINX, "image", many, "cpu", CPU_RATIO),
        ),
        (
            f"each client's first byte, p99 of {many} cold clients, ms"
            f" (<= {FIRST_BYTE_P99_MS:.0f})",
            lambda s: _first_byte(ms, cacheproxy_label(s), many, True),
        ),
        (
            f"first byte of each blob GET, p99, {many} cold clients, ms"
            f" (<= {FIRST_BYTE_P99_MS:.0f})",
            lambda s: _first_byte(ms, cacheproxy_label(s), many, False),
        ),
    ]
    for title, judge in rows:
        cells = []
        for s in segments:
            value, ok = judge(s)
            cells.append("-" if value is None else f"{value:.2f} {'ok' if ok else 'MISS'}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seg_head(s: int, default: int) -> str:
    return cacheproxy_label(s) + (" (default)" if s == default else "")


def _ratio(
    ms: Sequence[Measure], system: str, base: str, what: str, n: int, key: str, limit: float
) -> tuple[float | None, bool]:
    a, b = _find(ms, system, what, n), _find(ms, base, what, n)
    if a is None or b is None or a.failures or b.failures:
        return None, False
    x, y = (a.wall, b.wall) if key == "wall" else (a.cpu_per_gb, b.cpu_per_gb)
    if x is None or not y:
        return None, False
    value = x / y
    return value, value <= limit


def _worst_upstream(ms: Sequence[Measure], system: str) -> tuple[float | None, bool]:
    ratios = [m.upstream_ratio for m in ms if m.system == system and not m.failures]
    if not ratios:
        return None, False
    worst = max(ratios)
    return worst, worst <= UPSTREAM_RATIO


def _rss_spread(ms: Sequence[Measure], system: str, base: str) -> tuple[float | None, bool]:
    spreads = []
    for m in ms:
        b = _find(ms, base, m.what, m.clients)
        if m.system == system and b is not None and m.rss_kib and b.rss_kib:
            spreads.append((m.rss_kib - b.rss_kib) * 1024 / MB)
    if not spreads:
        return None, False
    worst = max(spreads)
    return worst, worst <= RSS_SPREAD_MB


def _first_byte(
    ms: Sequence[Measure], system: str, n: int, of_clients: bool
) -> tuple[float | None, bool]:
    m = _find(ms, system, "image", n)
    p99 = None if m is None or m.failures else m.first_byte_ms(0.99, of_clients)
    return p99, p99 is not None and p99 <= FIRST_BYTE_P99_MS


def notes(ms: Sequence[Measure]) -> list[str]:
    """Per system: requests upstream, ranges among them, and every failure."""
    out = []
    systems = list(dict.fromkeys(m.system for m in ms))
    for system in systems:
        mine = [m for m in ms if m.system == system]
        detail = "; ".join(
            f"{m.what} x{m.clients}: {m.upstream_gets} blob GETs ({m.ranged_gets} ranged)"
            + (f", spread of first bytes {_spread(m)}" if m.first_bytes else "")
            for m in mine
        )
        out.append(f"- {system}: {detail}.")
        for m in mine:
            for failure in m.failures[:5]:
                out.append(f"  - FAILURE {m.what} x{m.clients}: {failure}")
    return out


def _spread(m: Measure) -> str:
    ms_ = [1000 * t for t in m.first_bytes]
    return f"{min(ms_):.0f}-{max(ms_):.0f} ms (median {statistics.median(ms_):.0f})"
