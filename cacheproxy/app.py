"""Wiring: build the aiohttp application for a Config, and run it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import server
from .config import Config, ConfigError
from .fill import Fills
from .http import handlers, peer
from .http.access import AccessPolicy
from .http.keys import ACCESS, HOUSEKEEPER, METRICS, PROXY
from .http.middleware import authenticate, oci_errors, stamp_headers
from .metrics import CacheCollector, Metrics
from .peers.cluster import PREFIX as PEER_PREFIX
from .peers.cluster import start_cluster
from .proxy import Proxy
from .savings import dashboard
from .savings.ledger import Ledger
from .savings.metrics import SavingsCollector
from .savings.prices import load_pricing
from .savings.service import Savings
from .savings.store import FILENAME as LEDGER_FILE
from .store.blobs import BlobStore
from .store.housekeeping import Housekeeper
from .store.index import Index
from .upstream.pool import UpstreamPool

log = logging.getLogger(__name__)

# Request line and header fields beyond these are refused by aiohttp's parser
# with 400 before any handler runs.
MAX_LINE = 8190
MAX_FIELD = 8190


class _MalformedRequestFilter(logging.Filter):
    """Log a request aiohttp could not parse as one warning line, not a traceback.

    Garbage from the network is expected input for a server, not a bug; aiohttp
    already answers it with 400 and closes the connection.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed request refused: %s"
            record.args = (str(exc.message).strip(),)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_QUIET = _MalformedRequestFilter()


def build_app(config: Config) -> web.Application:
    """The proxy as an aiohttp application; state is created on startup."""
    server_log = logging.getLogger("aiohttp.server")
    if _QUIET not in server_log.filters:
        server_log.addFilter(_QUIET)
    app = web.Application(
        middlewares=[server.mark, oci_errors, authenticate],
        client_max_size=64 * 1024,
        handler_args={"max_line_size": MAX_LINE, "max_field_size": MAX_FIELD},
    )
    app.on_response_prepare.append(stamp_headers)
    app[ACCESS] = AccessPolicy.from_config(config)
    app.cleanup_ctx.append(_proxy_ctx(config))
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/dashboard", dashboard.page)
    app.router.add_get("/dashboard/data", dashboard.data)
    app.router.add_get(PEER_PREFIX + "/{tail:.*}", peer.peer_request)
    app.router.add_get("/_cacheproxy/peers", peer.cluster_view)
    app.router.add_route("*", "/v2", handlers.v2)
    app.router.add_route("*", "/v2/{tail:.*}", handlers.v2)
    app.router.add_route("*", "/{tail:.*}", handlers.not_found)
    return app


def _proxy_ctx(config: Config):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = BlobStore(config.cache_dir)
        await asyncio.to_thread(store.prepare)
        index = await asyncio.to_thread(Index, config.cache_dir / "index")
        pricing = await asyncio.to_thread(load_pricing, config.pricing_file)
        ledger = Ledger(
            config.cache_dir / LEDGER_FILE, flush_interval=config.savings_flush_interval
        )
        fills = Fills(store, ledger)
        upstreams = UpstreamPool(config)
        await asyncio.to_thread(upstreams.check)
        cluster = await start_cluster(config)
        proxy = Proxy(config, store, index, fills, upstreams, cluster=cluster, accounting=ledger)
        app[PROXY] = proxy
        housekeeper = Housekeeper(config, store, index, proxy.access)
        app[HOUSEKEEPER] = housekeeper
        fills.on_commit.append(housekeeper.poke)
        await housekeeper.start()
        proxy.access.start(index)
        app[METRICS] = Metrics(fills, upstreams)
        app[METRICS].registry.register(CacheCollector(proxy, housekeeper))
        savings = app[dashboard.SAVINGS] = Savings(config, pricing, ledger)
        app[METRICS].registry.register(SavingsCollector(ledger, savings.price_of))
        await ledger.start()
        log.info(
            "cacheproxy starting on %s, cache %s, upstreams %s, presets %s, default %s",
            config.listen,
            config.cache_dir,
            ", ".join(f"{u.name}={u.url}" for u in config.upstreams) or "none",
            ", ".join(config.presets) or "none",
            config.default_upstream,
        )
        try:
            yield
        finally:
            await housekeeper.close()
            await fills.close()
            await proxy.close()
            await proxy.access.close(index)
            await upstreams.close()
            if cluster is not None:
                await cluster.close()
            await asyncio.to_thread(index.close)
            # Last: the fills and the proxy closing above may still report counts.
            await ledger.close()

    return ctx


def new_loop(config: Config) -> asyncio.AbstractEventLoop:
    """The event loop the config asks for.

    "auto" is the default asyncio loop, chosen with numbers (benchmarks/RESULTS.md):
    it sends cached blobs with the kernel's sendfile (0.14 s of CPU per GB served
    against uvloop's 0.20, nginx 0.13) at the same throughput, and under a thousand
    busy connections it keeps accepting new ones, where uvloop fell behind.
    """
    if config.loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(config: Config) -> None:
    """Run the proxy until SIGTERM/SIGINT."""
    loop = new_loop(config)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(server.run(build_app(config), config))
    except OSError as exc:
        # A port in use, an unwritable cache directory: say so, no traceback.
        log.error("cannot serve on %s with cache %s: %s", config.listen, config.cache_dir, exc)
        raise SystemExit(1) from None
    except ConfigError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
