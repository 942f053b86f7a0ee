"""Running the app: the listener, TLS with certificate reload, the slow-loris bound,
and graceful shutdown on SIGTERM/SIGINT (in-flight transfers get time to finish)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from .config import Config, ConfigError, split_listen
from .http.keys import CONNECTION_GONE
from .http.middleware import protocol_errors_as_oci
from .listeners import exposure_problem

log = logging.getLogger(__name__)

# The default drain on SIGTERM (the ``shutdown_timeout`` setting).
SHUTDOWN_TIMEOUT = Config.shutdown_timeout
# Pending connections the kernel queues for accept(); asyncio's default of 100 drops
# connects when a node's pods all start at once (the kernel caps it at somaxconn).
BACKLOG = 4096


class HeaderDeadline:
    """Closes a connection that does not deliver a whole request head in time.

    aiohttp waits for request heads indefinitely; a slow-loris client could hold
    every connection that way. Each connection's protocol is wrapped: the first
    byte of a request head (on a new or an idle kept-alive connection) arms a timer,
    and the request reaching the app (the ``mark`` middleware) disarms it. Idle
    connections are bounded by aiohttp's own ``keepalive_timeout``.
    """

    def __init__(self, timeout: float) -> None:
        self.factory: Any = None
        self.timeout = timeout
        self._guards: dict[int, _Guard] = {}
        self.closed = 0

    def __call__(self) -> asyncio.Protocol:
        inner = self.factory()
        guard = _Guard(self, inner)
        self._guards[id(inner)] = guard
        return guard

    def started(self, protocol: object) -> None:
        guard = self._guards.get(id(protocol))
        if guard is not None:
            guard.in_request = True
            guard.disarm()

    def finished(self, protocol: object) -> None:
        guard = self._guards.get(id(protocol))
        if guard is not None:
            guard.in_request = False

    def gone(self, protocol: object) -> asyncio.Future[None] | None:
        """Done once ``protocol``'s connection is lost (None: a connection not seen)."""
        guard = self._guards.get(id(protocol))
        return guard.gone if guard is not None else None

    def forget(self, guard: _Guard) -> None:
        self._guards.pop(id(guard.inner), None)


class _Guard(asyncio.Protocol):
    """Forwards every protocol call to aiohttp's handler; watches for request heads."""

    def __init__(self, deadline: HeaderDeadline, inner: Any) -> None:
        self.deadline = deadline
        self.inner = inner
        self.in_request = False
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        # aiohttp cancels no handler when its client goes away (handler_cancellation
        # is off, on purpose: most work must finish); a request that only waits for
        # its client's sake (a blob's next bytes, a fill slot) watches this instead.
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def arm(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.deadline.timeout, self._expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.deadline.closed += 1
            log.info("closing a connection that sent no complete request head in time")
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass:
        # uvloop's TCPTransport only behaves like one.
        self.transport = cast(asyncio.Transport, transport)
        self.arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_request:
            self.arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if not self.gone.done():
            self.gone.set_result(None)
        self.deadline.forget(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


DEADLINE = web.AppKey("header_deadline", HeaderDeadline)


@web.middleware
async def mark(request: web.Request, handler: Any) -> web.StreamResponse:
    deadline = request.app.get(DEADLINE)
    if deadline is None:
        response: web.StreamResponse = await handler(request)
        return response
    deadline.started(request.protocol)
    gone = deadline.gone(request.protocol)
    if gone is not None:
        request[CONNECTION_GONE] = gone
    try:
        response = await handler(request)
    finally:
        deadline.finished(request.protocol)
    return response


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

    def __init__(self, runner: web.AppRunner, servers: list[asyncio.Server]) -> None:
        self._runner = runner
        self._servers = servers
        self._reloader: asyncio.Task[None] | None = None

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        await self._runner.shutdown()
        await self._runner.cleanup()


async def start(app: web.Application, config: Config) -> Listener:
    """Set the app up and listen (TLS and the header deadline included), on the client
    listener and, if configured, the peer listener.

    Raises ConfigError when the listener would hand the proxy's upstream logins to
    the network (see ``listeners.exposure_problem``).
    """
    problem = exposure_problem(config)
    if problem is not None:
        raise ConfigError(problem)
    deadline = HeaderDeadline(config.client_header_timeout)
    app[DEADLINE] = deadline
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=config.keepalive_timeout,
        shutdown_timeout=config.shutdown_timeout,
        handle_signals=False,
    )
    await runner.setup()
    protocols = runner.server
    assert protocols is not None
    deadline.factory = lambda: protocol_errors_as_oci(protocols())
    context = None
    if config.tls_cert is not None and config.tls_key is not None:
        context = await asyncio.to_thread(tls_context, config.tls_cert, config.tls_key)
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        servers.append(
            await loop.create_server(
                deadline, config.host, config.port, ssl=context, backlog=BACKLOG
            )
        )
        if config.peer_listen is not None:
            host, port = split_listen(config.peer_listen)
            servers.append(
                await loop.create_server(deadline, host, port, ssl=context, backlog=BACKLOG)
            )
            log.info("peers reach this node on %s", config.peer_listen)
    except BaseException:
        for server in servers:
            server.close()
        await runner.cleanup()
        raise
    listener = Listener(runner, servers)
    if context is not None:
        assert config.tls_cert is not None and config.tls_key is not None
        listener._reloader = asyncio.create_task(
            _reload_certs(context, config.tls_cert, config.tls_key, config.tls_reload)
        )
    log.info("listening on %s%s", config.listen, " (TLS)" if context else "")
    return listener


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
