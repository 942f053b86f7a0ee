"""The ledger's counters and the month's saved dollars, for Prometheus.

Read from the ledger's in-memory totals at scrape time (no disk, nothing that can
wait). Labels stop at the upstream: per-repository series would grow without
bound; ``cacheproxy report`` and the dashboard have the repositories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .db import Counts
from .ledger import Ledger
from .prices import Price
from .tiers import saved

_COUNTERS: tuple[tuple[str, str, Callable[[Counts], int]], ...] = (
    ("blobs_served", "Blob GETs answered with a body", lambda c: c.blobs_served),
    ("manifests_served", "Manifest GETs answered with a body", lambda c: c.manifests_served),
    (
        "pulls_avoided",
        "Manifest GETs answered without an upstream GET (pulls a registry would count)",
        lambda c: c.pulls_avoided,
    ),
    (
        "upstream_gets",
        "GETs the proxy sent upstream (fills, manifests)",
        lambda c: c.upstream_requests,
    ),
    ("upstream_bytes", "Bytes the proxy's upstream GETs brought", lambda c: c.upstream_bytes),
    ("bytes_avoided", "Bytes clients got without an upstream transfer", lambda c: c.avoided),
    ("stored_bytes", "Bytes of verified blobs added to the cache", lambda c: c.stored_bytes),
    (
        "shared_get_requests",
        "GET and HEAD requests to the shared tier (as S3 bills them)",
        lambda c: c.shared_get_requests,
    ),
    ("shared_get_bytes", "Bytes read from the shared tier", lambda c: c.shared_get_bytes),
    (
        "shared_put_requests",
        "PUT, POST and LIST requests to the shared tier",
        lambda c: c.shared_put_requests,
    ),
    ("shared_put_bytes", "Bytes written to the shared tier", lambda c: c.shared_put_bytes),
)


class SavingsCollector(Collector):
    """``cacheproxy_savings_*``: all-time counters and this month's dollars saved."""

    def __init__(self, ledger: Ledger, price_of: Callable[[str], Price]) -> None:
        self._ledger = ledger
        self._price_of = price_of

    def collect(self) -> Iterator[Metric]:
        totals = self._ledger.totals()
        served = CounterMetricFamily(
            "cacheproxy_savings_served_bytes",
            "Bytes served to clients, by where they came from",
            labels=["upstream", "source"],
        )
        for up, c in sorted(totals.items()):
            served.add_metric([up, "cache"], c.served_cache)
            served.add_metric([up, "peer"], c.served_peer)
            served.add_metric([up, "shared"], c.served_shared)
            served.add_metric([up, "upstream"], c.served_upstream)
        yield served
        for name, doc, value in _COUNTERS:
            family = CounterMetricFamily(f"cacheproxy_savings_{name}", doc, labels=["upstream"])
            for up, c in sorted(totals.items()):
                family.add_metric([up], value(c))
            yield family

        month, month_totals = self._ledger.month_totals()
        dollars = GaugeMetricFamily(
            "cacheproxy_savings_month_saved_usd",
            "US dollars the cache saved this UTC calendar month, at the configured prices",
            labels=["upstream", "month"],
        )
        for up, c in sorted(month_totals.items()):
            schedules = self._price_of(up).schedules
            dollars.add_metric([up, month], float(saved(schedules, c.upstream_bytes, c.avoided)))
        yield dollars
