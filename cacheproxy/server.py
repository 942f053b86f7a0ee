"""Running the app: the listeners (their connections guarded: see connections/), TLS
with certificate reload, and graceful shutdown on SIGTERM/SIGINT (in-flight
transfers get time to finish)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from pathlib import Path

from aiohttp import web

from .config import Config, ConfigError, split_listen
from .connections import CONNECTIONS, Connections, Gate, budget, tcpinfo
from .http.middleware import protocol_errors_as_oci
from .listeners import exposure_problem

log = logging.getLogger(__name__)

# The default drain on SIGTERM (the ``shutdown_timeout`` setting).
SHUTDOWN_TIMEOUT = Config.shutdown_timeout
# Pending connections the kernel queues for accept(); asyncio's default of 100 drops
# connects when a node's pods all start at once (the kernel caps it at somaxconn).
BACKLOG = 4096


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _stamp(cert: Path, key: Path) -> tuple[float, float]:
    return (cert.stat().st_mtime, key.stat().st_mtime)


async def _reload_certs(context: ssl.SSLContext, cert: Path, key: Path, interval: float) -> None:
    """New handshakes use a renewed certificate (cert-manager, certbot) at once."""
    stamp = await asyncio.to_thread(_stamp, cert, key)
    while True:
        await asyncio.sleep(interval)
        try:
            now = await asyncio.to_thread(_stamp, cert, key)
            if now != stamp:
                await asyncio.to_thread(context.load_cert_chain, cert, key)
                stamp = now
                log.info("reloaded TLS certificate %s", cert)
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS certificate reload failed, keeping the old one: %s", exc)


class Listener:
    """The app served on the configured address; ``close`` shuts it down gracefully."""

    def __init__(
        self, runner: web.AppRunner, servers: list[asyncio.Server], connections: Connections
    ) -> None:
        self._runner = runner
        self._servers = servers
        self._connections = connections
        self._reloaders: list[asyncio.Task[None]] = []

    def reload(self, context: ssl.SSLContext, cert: Path, key: Path, interval: float) -> None:
        """Watch ``cert`` and ``key`` for a renewal, into ``context``, until closed."""
        self._reloaders.append(asyncio.create_task(_reload_certs(context, cert, key, interval)))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in self._reloaders:
            task.cancel()
        for task in self._reloaders:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._connections.close()
        await self._runner.shutdown()
        await self._runner.cleanup()


async def start(app: web.Application, config: Config) -> Listener:
    """Set the app up and listen (TLS and the connections' bounds included), on the
    client listener and, if configured, the peer and the metrics listeners.

    Raises ConfigError when the listener would hand the proxy's upstream logins to
    the network (see ``listeners.exposure_problem``), or when the descriptor limit
    leaves no room for connections (see ``connections.budget``).
    """
    problem = exposure_problem(config)
    if problem is not None:
        raise ConfigError(problem)
    bounds = budget.plan(config, budget.raise_nofile())
    if bounds.warning is not None:
        log.warning("%s", bounds.warning)
    if not tcpinfo.SUPPORTED:
        log.warning("send_timeout is off: this system does not report TCP_INFO")
    connections = app[CONNECTIONS] = Connections()
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=config.keepalive_timeout,
        shutdown_timeout=config.shutdown_timeout,
        handle_signals=False,
        # A request whose body is not read by the time it is answered (an error, or
        # any request: the proxy reads no body) closes its connection at once.
        # aiohttp's default reads such a body on for 10 s after the answer, when the
        # connection is neither idle nor in a request: a stranger sending bodies
        # that never end would hold connections no bound could take back.
        lingering_time=0,
    )
    await runner.setup()
    context = peer_context = None
    if config.tls_cert is not None and config.tls_key is not None:
        context = peer_context = await asyncio.to_thread(
            tls_context, config.tls_cert, config.tls_key
        )
    # The peer listener's own certificate, when it has one: the client listener may
    # stay plain on loopback while peers talk TLS across the network.
    if config.peer_tls_cert is not None and config.peer_tls_key is not None:
        peer_context = await asyncio.to_thread(
            tls_context, config.peer_tls_cert, config.peer_tls_key
        )
    try:
        servers = await _listen(config, bounds, connections, runner, (context, peer_context))
    except BaseException:
        await runner.cleanup()
        raise
    listener = Listener(runner, servers, connections)
    if context is not None and config.tls_cert is not None and config.tls_key is not None:
        listener.reload(context, config.tls_cert, config.tls_key, config.tls_reload)
    if peer_context is not context and config.peer_tls_cert and config.peer_tls_key:
        assert peer_context is not None
        listener.reload(peer_context, config.peer_tls_cert, config.peer_tls_key, config.tls_reload)
    log.info(
        "listening on %s%s; connections at most %d%s (RLIMIT_NOFILE %d), send_timeout %.0f s",
        config.listen,
        " (TLS)" if context else "",
        bounds.client,
        f", {bounds.peer} on the peer listener" if config.peer_listen else "",
        bounds.nofile,
        config.send_timeout,
    )
    return listener


# Connections the metrics listener holds: Prometheus scrapes with one or two.
METRICS_CONNECTIONS = 16


async def _listen(
    config: Config,
    bounds: budget.Bounds,
    connections: Connections,
    runner: web.AppRunner,
    contexts: tuple[ssl.SSLContext | None, ssl.SSLContext | None],
) -> list[asyncio.Server]:
    """The client listener and, if configured, the peer and metrics listeners, each
    with its gate (``contexts``: the client's TLS, the peers')."""
    protocols = runner.server
    assert protocols is not None
    context, peer_context = contexts
    loop = asyncio.get_running_loop()
    addresses = [("client", config.host, config.port, bounds.client, context)]
    if config.peer_listen is not None:
        host, port = split_listen(config.peer_listen)
        addresses.append(("peer", host, port, bounds.peer, peer_context))
    if config.metrics_listen is not None:
        host, port = split_listen(config.metrics_listen)
        addresses.append(("metrics", host, port, METRICS_CONNECTIONS, context))
    servers: list[asyncio.Server] = []
    try:
        for name, host, port, bound, tls in addresses:
            # Plain TCP: the guards run the TLS handshakes (connections/guard.py), so
            # that a socket counts against the bound from its accept.
            gate = Gate(name, bound, config.client_header_timeout, config.send_timeout, tls)
            factory = connections.factory(gate, lambda: protocol_errors_as_oci(protocols()))
            servers.append(await loop.create_server(factory, host, port, backlog=BACKLOG))
    except BaseException:
        for server in servers:
            server.close()
        raise
    if config.peer_listen is not None:
        log.info(
            "peers reach this node on %s%s", config.peer_listen, " (TLS)" if peer_context else ""
        )
    if config.metrics_listen is not None:
        log.info("Prometheus reaches this node on %s", config.metrics_listen)
    return servers


async def run(app: web.Application, config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    listener = await start(app, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info(
            "shutting down: finishing transfers in flight (up to %.0f s)", config.shutdown_timeout
        )
    finally:
        await listener.close()
