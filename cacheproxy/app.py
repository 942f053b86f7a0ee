"""Wiring: build the aiohttp application for a Config, and run it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .config import Config
from .connections import CONNECTIONS, mark
from .http import admin, dashboard, handlers, peer, preheat, probes
from .http.clientauth import ClientAuth
from .http.keys import (
    BLOBS,
    CLIENT_AUTH,
    CLUSTER,
    FILLS,
    HOLDINGS,
    KEEPER,
    MANIFESTS,
    METRICS,
    PEER_BLOBS,
    PEER_MANIFESTS,
    PEER_PIECES,
    RATES,
    READINESS,
    REFERRERS,
    SAVINGS,
    SHARED,
    STORE,
    TAG_LISTS,
    UPSTREAMS,
    WRITEBACK,
)
from .http.middleware import authenticate, oci_errors, stamp_headers
from .http.operator import OPERATOR, OperatorAccess
from .listeners import guard
from .metrics import (
    CacheCollector,
    ConnectionsCollector,
    LoginCollector,
    Metrics,
    PolicyCollector,
    SharedCollector,
    TagCollector,
)
from .peers.cluster import PREFIX as PEER_PREFIX
from .runtime.serving import ServingRuntime, open_serving
from .savings.collector import SavingsCollector
from .savings.prices import load_pricing
from .savings.service import Savings
from .telemetry import RatesCollector, TelemetryCollector

log = logging.getLogger(__name__)

# Request line and header fields beyond these are refused by aiohttp's parser
# with 400 before any handler runs (answered as OCI JSON: see
# http.middleware.protocol_errors_as_oci, installed by server.start).
MAX_LINE = 8190
MAX_FIELD = 8190


def build_app(
    config: Config, *, upstream_clock: Callable[[], float] | None = None
) -> web.Application:
    """The proxy as an aiohttp application; state is created on startup.

    ``upstream_clock``: the monotonic clock of the upstream clients (token lifetimes,
    retry budgets); tests pass one they control.
    """
    app = web.Application(
        middlewares=[mark, oci_errors, guard(config), authenticate],
        client_max_size=64 * 1024,
        handler_args={"max_line_size": MAX_LINE, "max_field_size": MAX_FIELD},
    )
    app.on_response_prepare.append(stamp_headers)
    app[CLIENT_AUTH] = ClientAuth.from_config(config)
    app[OPERATOR] = OperatorAccess.from_config(config)
    app.on_cleanup.append(_close_client_auth)
    app.cleanup_ctx.append(_runtime_ctx(config, upstream_clock))
    app.router.add_get("/metrics", probes.metrics)
    app.router.add_get("/healthz", probes.healthz)
    app.router.add_get("/readyz", probes.readyz)
    app.router.add_get("/dashboard", dashboard.page)
    app.router.add_get("/dashboard/data", dashboard.data)
    app.router.add_get(PEER_PREFIX + "/{tail:.*}", peer.peer_request)
    app.router.add_get("/_cacheproxy/peers", peer.cluster_view)
    app.router.add_post("/_cacheproxy/refresh", admin.refresh)
    app.router.add_post("/_cacheproxy/preheat", preheat.preheat)
    app.router.add_route("*", "/v2", handlers.v2)
    app.router.add_route("*", "/v2/{tail:.*}", handlers.v2)
    app.router.add_route("*", "/{tail:.*}", handlers.not_found)
    return app


async def _close_client_auth(app: web.Application) -> None:
    await app[CLIENT_AUTH].close()


def _runtime_ctx(config: Config, upstream_clock: Callable[[], float] | None):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pricing = await asyncio.to_thread(load_pricing, config.pricing_file)
        async with open_serving(config, upstream_clock=upstream_clock) as rt:
            _share(app, rt)
            _measure(app, rt, Savings(config, pricing, rt.ledger))
            log.info(
                "cacheproxy starting on %s, cache %s, upstreams %s, presets %s, default %s%s",
                config.listen,
                config.cache_dir,
                ", ".join(f"{u.name}={u.url}" for u in config.upstreams) or "none",
                ", ".join(config.presets) or "none",
                config.default_upstream,
                f", shared tier s3://{config.shared.bucket}/{config.shared.root}"
                if config.shared is not None
                else "",
            )
            yield

    return ctx


def _share(app: web.Application, rt: ServingRuntime) -> None:
    """What the handlers reach, each under its own typed key."""
    app[BLOBS] = rt.clients.blobs
    app[MANIFESTS] = rt.clients.manifests
    app[TAG_LISTS] = rt.tag_lists
    app[REFERRERS] = rt.clients.referrers
    app[UPSTREAMS] = rt.upstreams
    app[FILLS] = rt.fills
    app[READINESS] = rt.storage.readiness
    app[KEEPER] = rt.keeper
    app[STORE] = rt.storage.store
    app[RATES] = rt.fills.options.rates
    if rt.cluster is not None:
        app[CLUSTER] = rt.cluster.cluster
        app[PEER_BLOBS] = rt.cluster.peers.blobs
        app[PEER_MANIFESTS] = rt.cluster.peers.manifests
        app[HOLDINGS] = rt.cluster.holdings
        app[PEER_PIECES] = rt.cluster.pieces
    if rt.shared is not None and rt.writeback is not None:
        app[SHARED] = rt.shared
        app[WRITEBACK] = rt.writeback


def _measure(app: web.Application, rt: ServingRuntime, savings: Savings) -> None:
    """/metrics: one registry of its own, a collector per part."""
    metrics = app[METRICS] = Metrics(rt.fills, rt.upstreams)
    cluster = rt.cluster.cluster if rt.cluster is not None else None
    metrics.registry.register(CacheCollector(rt.fills, rt.keeper, cluster))
    metrics.registry.register(TagCollector(rt.tag_stats))
    metrics.registry.register(TelemetryCollector(rt.keeper, rt.upstreams))
    metrics.registry.register(RatesCollector(rt.fills.options.rates))
    if CONNECTIONS in app:
        metrics.registry.register(ConnectionsCollector(app[CONNECTIONS]))
    metrics.registry.register(LoginCollector(app[CLIENT_AUTH].passwords))
    if rt.clients.policy is not None:
        metrics.registry.register(PolicyCollector(rt.clients.policy))
    if rt.shared is not None and rt.writeback is not None:
        metrics.registry.register(SharedCollector(rt.shared, rt.writeback))
    app[SAVINGS] = savings
    metrics.registry.register(SavingsCollector(rt.ledger, savings.price_of))
