"""Prometheus metrics, in a registry of the proxy's own (never the global one).

Values are read from the objects that own them when Prometheus scrapes, so the
serving path does no metrics work beyond the counters it already keeps.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .blobs.inflight import Fills
from .config.freshness import STALE_REASONS
from .connections import Connections
from .http.passwords import PasswordChecks
from .lifecycle.keeper import Keeper
from .manifests.tags import TagStats
from .peers.cluster import Cluster
from .policy.engine import OUTCOMES, Policies
from .shared.tier import SharedTier
from .shared.writeback import WriteBack
from .telemetry import FirstByte
from .upstream.pool import UpstreamPool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ProxyCollector(Collector):
    """Fills and upstreams, as they are at scrape time."""

    def __init__(self, fills: Fills, upstreams: UpstreamPool) -> None:
        self._fills = fills
        self._upstreams = upstreams

    def collect(self) -> Iterator[Metric]:
        stats = self._fills.stats
        yield CounterMetricFamily(
            "cacheproxy_upstream_blob_gets", "Blob GETs sent upstream", stats.upstream_gets
        )
        yield CounterMetricFamily(
            "cacheproxy_upstream_blob_bytes",
            "Blob bytes received from upstream",
            stats.upstream_bytes,
        )
        yield CounterMetricFamily(
            "cacheproxy_fills_completed", "Blobs fetched, verified and cached", stats.completed
        )
        yield CounterMetricFamily(
            "cacheproxy_fills_failed",
            "Blob fills that failed (an upstream's refusal of the repository is an answer)",
            stats.failed,
        )
        yield CounterMetricFamily(
            "cacheproxy_fills_resumed", "Upstream bodies resumed with Range", stats.resumed
        )
        yield CounterMetricFamily(
            "cacheproxy_fill_segments",
            "Byte ranges asked for beyond each blob's first (segmented fills)",
            stats.segments,
        )
        yield CounterMetricFamily(
            "cacheproxy_fills_single_stream",
            "Fills put on one stream because a feed answered a range wrongly",
            stats.single_stream,
        )
        yield CounterMetricFamily(
            "cacheproxy_digest_mismatches",
            "Upstream blobs discarded for a wrong digest",
            stats.digest_mismatches,
        )
        yield CounterMetricFamily(
            "cacheproxy_peer_blob_gets", "Blob GETs answered by peer nodes", stats.peer_gets
        )
        yield CounterMetricFamily(
            "cacheproxy_peer_blob_bytes", "Blob bytes received from peer nodes", stats.peer_bytes
        )
        yield CounterMetricFamily(
            "cacheproxy_shared_blob_bytes",
            "Blob bytes received from the shared tier",
            stats.shared_bytes,
        )
        yield GaugeMetricFamily(
            "cacheproxy_fills_active", "Blob fills in progress", self._fills.active
        )
        yield from _gate_metrics(self._fills)
        requests = CounterMetricFamily(
            "cacheproxy_upstream_requests", "HTTP requests sent upstream", labels=["upstream"]
        )
        limit = GaugeMetricFamily(
            "cacheproxy_upstream_ratelimit_limit",
            "Upstream pull limit (ratelimit-limit)",
            labels=["upstream", "window_seconds"],
        )
        remaining = GaugeMetricFamily(
            "cacheproxy_upstream_ratelimit_remaining",
            "Pulls left in the window (ratelimit-remaining)",
            labels=["upstream", "window_seconds"],
        )
        for up in self._upstreams.all():
            requests.add_metric([up.name], up.requests_sent)
            if up.rate_limit is not None:
                window = str(up.rate_limit.window or "")
                limit.add_metric([up.name, window], up.rate_limit.limit)
                remaining.add_metric([up.name, window], up.rate_limit.remaining)
        yield requests
        yield limit
        yield remaining


def _gate_metrics(fills: Fills) -> Iterator[Metric]:
    """The fill slots: who waits, what nobody reads, what was cancelled or refused."""
    gate = fills.gate
    yield GaugeMetricFamily(
        "cacheproxy_fills_waiting", "Blob requests waiting for a fill slot", gate.waiting
    )
    yield GaugeMetricFamily(
        "cacheproxy_fills_abandoned",
        "Fills nobody reads any more (preemptible), holding a slot",
        gate.abandoned,
    )
    yield CounterMetricFamily(
        "cacheproxy_fills_preempted",
        "Fills nobody read, cancelled to give their slot to a waiting request",
        gate.stats.preempted,
    )
    refused = CounterMetricFamily(
        "cacheproxy_fills_refused",
        "Blob requests answered TOOMANYREQUESTS, by the bound they met",
        labels=["reason"],
    )
    for reason, count in gate.stats.refused.items():
        refused.add_metric([reason], count)
    yield refused


class TagCollector(Collector):
    """``cacheproxy_tags_stale_total{reason}``: tags served although the upstream did
    not confirm them, by the reason their freshness rule served them on."""

    def __init__(self, stats: TagStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "cacheproxy_tags_stale",
            "Tags served stale: the upstream did not confirm them (reason: 429, 5xx,"
            " offline, 404, 401, 403)",
            labels=["reason"],
        )
        for reason in STALE_REASONS:
            family.add_metric([reason], self._stats.stale[reason])
        yield family


class CacheCollector(Collector):
    """Eviction, stream-through and peer counters."""

    def __init__(self, fills: Fills, keeper: Keeper, cluster: Cluster | None) -> None:
        self._fills = fills
        self._keeper = keeper
        self._cluster = cluster

    def collect(self) -> Iterator[Metric]:
        hk = self._keeper
        yield CounterMetricFamily(
            "cacheproxy_evicted_blobs", "Blobs evicted for max_size or min_free", hk.evicted_blobs
        )
        yield CounterMetricFamily(
            "cacheproxy_evicted_bytes", "Bytes evicted for max_size or min_free", hk.evicted_bytes
        )
        yield CounterMetricFamily(
            "cacheproxy_passthrough",
            "Misses streamed through uncached because the disk was nearly full",
            self._fills.stats.streamed_through,
        )
        cluster = self._cluster
        if cluster is not None:
            members = GaugeMetricFamily(
                "cacheproxy_peer_members", "Cluster members by health", labels=["health"]
            )
            health = list(cluster.membership.health().values())
            for state in ("self", "healthy", "avoided"):
                members.add_metric([state], health.count(state))
            yield members
            yield CounterMetricFamily(
                "cacheproxy_peer_bad_content",
                "Peer answers that failed verification",
                cluster.stats.bad_content,
            )
            failures = CounterMetricFamily(
                "cacheproxy_peer_failures",
                "Requests to peers that failed (not reached, timed out, TLS refused)",
                labels=["kind"],
            )
            failures.add_metric(["tls"], cluster.stats.tls_failures)
            failures.add_metric(["other"], cluster.stats.failures - cluster.stats.tls_failures)
            yield failures
            swarm = CounterMetricFamily(
                "cacheproxy_peer_swarm", "The swarm's requests and outcomes", labels=["what"]
            )
            stats = cluster.stats
            for what, value in (
                ("holder_lists", stats.holder_lists),
                ("piece_requests", stats.piece_requests),
                ("busy_answers", stats.busy),
                ("piece_failures", stats.piece_failures),
                ("fallbacks", stats.swarm_fallbacks),
                ("mismatches", stats.swarm_mismatches),
            ):
                swarm.add_metric([what], value)
            yield swarm


class SharedCollector(Collector):
    """``cacheproxy_shared_*``: the shared tier's reads, writes and faults."""

    def __init__(self, tier: SharedTier, writeback: WriteBack) -> None:
        self._tier = tier
        self._writeback = writeback

    def collect(self) -> Iterator[Metric]:
        stats = self._tier.stats
        counters = [
            ("gets", "GETs sent to the bucket (blobs and manifests)", stats.gets),
            ("heads", "HEADs sent to the bucket", stats.heads),
            ("hits", "Reads the bucket answered with the object", stats.hits),
            ("misses", "Reads the bucket answered 404 (then the upstream)", stats.misses),
            ("resumed", "Bucket bodies that broke off and were asked again", stats.resumed),
            ("bad_objects", "Objects that failed verification (deleted)", stats.bad_objects),
            ("uploads", "Objects written to the bucket", stats.uploads),
            ("upload_bytes", "Bytes written to the bucket", stats.upload_bytes),
            ("upload_requests", "PUT/POST requests of the uploads", stats.upload_requests),
            ("already_there", "Uploads skipped: another proxy wrote it", stats.already_there),
            ("upload_failures", "Upload attempts that failed", stats.upload_failures),
            (
                "uploads_dropped",
                "Uploads given up (queue full, tries spent)",
                stats.uploads_dropped,
            ),
            ("redirects", "Blob GETs answered with a 307 to the bucket", stats.redirects),
            ("aborted_uploads", "Abandoned multipart uploads aborted", stats.aborted_uploads),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(f"cacheproxy_shared_{name}", doc, value)
        faults = CounterMetricFamily(
            "cacheproxy_shared_faults",
            "Bucket faults that sent a request to the upstream, by kind",
            labels=["kind"],
        )
        for kind, count in sorted(stats.faults.items()):
            faults.add_metric([kind], count)
        yield faults
        yield GaugeMetricFamily(
            "cacheproxy_shared_uploads_pending",
            "Uploads queued or running",
            self._writeback.pending,
        )
        yield GaugeMetricFamily(
            "cacheproxy_shared_up",
            "1 while the bucket is asked, 0 after a fault",
            int(self._tier.up),
        )


class ConnectionsCollector(Collector):
    """``cacheproxy_connections_*``: each listener's open connections, its bound, and
    what the bounds did (label ``listener``: client or peer)."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def collect(self) -> Iterator[Metric]:
        gates = list(self._connections.gates.values())
        opened = GaugeMetricFamily(
            "cacheproxy_connections_open", "Open connections", labels=["listener"]
        )
        waiting = GaugeMetricFamily(
            "cacheproxy_connections_waiting",
            "Open connections waiting for a request (new, or kept alive)",
            labels=["listener"],
        )
        bound = GaugeMetricFamily(
            "cacheproxy_connections_max", "The bound on open connections", labels=["listener"]
        )
        handshakes = GaugeMetricFamily(
            "cacheproxy_connections_handshaking",
            "Sockets accepted whose TLS handshake is in progress",
            labels=["listener"],
        )
        for gate in gates:
            opened.add_metric([gate.name], gate.open)
            waiting.add_metric([gate.name], gate.waiting)
            bound.add_metric([gate.name], gate.bound)
            handshakes.add_metric([gate.name], gate.handshaking)
        yield opened
        yield waiting
        yield bound
        yield handshakes
        counters = [
            (
                "refused",
                "Connections answered 503 (or reset, a TLS handshake too) with every"
                " connection busy",
            ),
            ("shed", "Idle connections closed to make room for a new one"),
            (
                "displaced",
                "Connections and TLS handshakes closed at the bound for one from an"
                " address holding less than its share",
            ),
            ("send_timeouts", "Connections closed: the client took nothing for send_timeout"),
            ("header_timeouts", "Connections closed without a complete request head in time"),
        ]
        for name, doc in counters:
            family = CounterMetricFamily(f"cacheproxy_connections_{name}", doc, labels=["listener"])
            for gate in gates:
                family.add_metric([gate.name], getattr(gate.stats, name))
            yield family


class LoginCollector(Collector):
    """``cacheproxy_password_checks_*``: the bcrypt checks of new logins."""

    def __init__(self, passwords: PasswordChecks) -> None:
        self._passwords = passwords

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "cacheproxy_password_checks_pending",
            "Password checks running or waiting",
            self._passwords.pending,
        )
        refused = CounterMetricFamily(
            "cacheproxy_password_checks_refused",
            "Logins answered TOOMANYREQUESTS: every check taken (full), or the address's share",
            labels=["reason"],
        )
        for reason, count in self._passwords.refused.items():
            refused.add_metric([reason], count)
        yield refused


class PolicyCollector(Collector):
    """``cacheproxy_policy_checks``: manifest requests each [[policy]] checked, by what
    it decided (label ``policy``: its name, else its position; a bounded set)."""

    def __init__(self, policies: Policies) -> None:
        self._policies = policies

    def collect(self) -> Iterator[Metric]:
        checks = CounterMetricFamily(
            "cacheproxy_policy_checks",
            "Manifest requests a signature policy checked: verified, refused (enforce),"
            " warned (warn), audited (audit: unsigned), deferred (an index left to its"
            " platforms), material (a signature, attestation or SBOM, served unsigned)",
            labels=["policy", "outcome"],
        )
        for label, counts in self._policies.stats.items():
            for outcome in OUTCOMES:
                checks.add_metric([label, outcome], counts[outcome])
        yield checks


class Metrics:
    """The proxy's metrics registry."""

    def __init__(self, fills: Fills, upstreams: UpstreamPool) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProxyCollector(fills, upstreams))
        self.first_byte = FirstByte(self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
