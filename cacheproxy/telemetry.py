"""What alerts and dashboards need beyond the counters the parts keep.

- ``cacheproxy_build_info``: 1, labelled with the version: an ``_info`` series, so a
  "proxy down" alert can tell a node that stopped from one never scraped;
- ``cacheproxy_first_byte_seconds``: a histogram of the time from a client's
  request to its answer's first byte, by ``kind`` (manifest, blob) and ``source``
  (cache, peer, shared, upstream): eight series, whatever the traffic;
- the disk against its bounds, as the keeper last saw it: the cache's bytes and
  ``max_size``, the free bytes and ``min_free``;
- ``cacheproxy_upstream_errors_total``: requests that found no connection
  (``kind="unreachable"``) and 5xx answers, by upstream (bounded: the configured
  upstreams, and at most ``max_dynamic_upstreams`` ECR registries);
- the bandwidth limits set, and what went through each.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib import metadata

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .accounting import Kind, Origin
from .lifecycle.keeper import Keeper
from .rates import Rates
from .upstream.pool import UpstreamPool

KINDS: tuple[Kind, ...] = ("manifest", "blob")
SOURCES: tuple[Origin, ...] = ("cache", "peer", "shared", "upstream")
# From a manifest served from memory (well under 5 ms) to a cold blob behind a slow
# registry (seconds); past 30 s it is a stall, counted in +Inf.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def version() -> str:
    """The installed cacheproxy's version ("unknown" when run from a bare tree)."""
    try:
        return metadata.version("cacheproxy")
    except metadata.PackageNotFoundError:
        return "unknown"


class FirstByte:
    """The first-byte histogram; every kind-and-source child exists from the start,
    so a dashboard shows zeros, not gaps."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._histogram = Histogram(
            "cacheproxy_first_byte_seconds",
            "Seconds from a client's request to its answer's first byte",
            ["kind", "source"],
            buckets=BUCKETS,
            registry=registry,
        )
        for kind in KINDS:
            for source in SOURCES:
                self._histogram.labels(kind, source)

    def observe(self, kind: Kind, source: Origin, seconds: float) -> None:
        self._histogram.labels(kind, source).observe(seconds)


class TelemetryCollector(Collector):
    """The build, the disk against its bounds, the upstreams' errors."""

    def __init__(self, keeper: Keeper, upstreams: UpstreamPool) -> None:
        self._keeper = keeper
        self._upstreams = upstreams
        self._labels = {"version": version(), "python": platform.python_version()}

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "cacheproxy_build_info", "Always 1: the running build", labels=list(self._labels)
        )
        info.add_metric(list(self._labels.values()), 1)
        yield info
        yield from self._disk()
        errors = CounterMetricFamily(
            "cacheproxy_upstream_errors",
            "Upstream requests that found no connection, or were answered 5xx",
            labels=["upstream", "kind"],
        )
        for up in self._upstreams.all():
            errors.add_metric([up.name, "unreachable"], up.unreachable)
            errors.add_metric([up.name, "5xx"], up.server_errors)
        yield errors

    def _disk(self) -> Iterator[Metric]:
        keeper = self._keeper
        gauges = []
        space = keeper.last_space
        if space is not None:
            gauges += [
                ("disk_free_bytes", "Free bytes on the cache's file system", space.free),
                ("disk_total_bytes", "Size of the cache's file system", space.total),
                ("disk_min_free_bytes", "Bytes min_free keeps free", keeper.min_free(space.total)),
            ]
        if keeper.limit is not None:
            gauges.append(("cache_max_bytes", "Bytes the cache may hold (max_size)", keeper.limit))
        if keeper.cache_bytes is not None:
            gauges.append(
                (
                    "cache_bytes",
                    "Bytes of blobs the cache held at the last check",
                    keeper.cache_bytes,
                )
            )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"cacheproxy_{name}", doc, value)


class RatesCollector(Collector):
    """The bandwidth limits set: each one's bytes a second, the bytes that went
    through it and the seconds transfers waited on it, by ``kind`` (upstream,
    peer_upload, prefetch)."""

    def __init__(self, rates: Rates) -> None:
        self._rates = rates

    def collect(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily(
            "cacheproxy_rate_limit_bytes_per_second",
            "A bandwidth limit set (upstream_rate, peer_upload_rate, prefetch_rate)",
            labels=["kind"],
        )
        through = CounterMetricFamily(
            "cacheproxy_rate_limited_bytes", "Bytes sent or taken under a limit", labels=["kind"]
        )
        waited = CounterMetricFamily(
            "cacheproxy_rate_limit_wait_seconds",
            "Seconds transfers waited for a limit, summed over transfers",
            labels=["kind"],
        )
        for rate in self._rates.all():
            limit.add_metric([rate.kind], rate.per_second)
            through.add_metric([rate.kind], rate.bytes)
            waited.add_metric([rate.kind], rate.waited)
        yield from (limit, through, waited)
