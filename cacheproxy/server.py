"""Running the app: the listener, TLS with certificate reload, the slow-loris bound,
and graceful shutdown on SIGTERM/SIGINT (in-flight transfers get time to finish)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from .config import Config

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 30.0
# Pending connections the kernel queues for accept(); asyncio's default of 100 drops
# connects when a node's pods all start at once (the kernel caps it at somaxconn).
BACKLOG = 4096


class HeaderDeadline:
    """Closes a connection that has not delivered a whole request head in time.

    aiohttp waits for headers indefinitely; a slow-loris client could hold every
    connection slot that way. The protocol factory arms a timer per connection; the
    first parsed request (seen by the ``mark`` middleware) disarms it. Idle
    keep-alive connections are bounded by aiohttp's own ``keepalive_timeout``.
    """

    def __init__(self, timeout: float) -> None:
        self.factory: Any = None
        self._timeout = timeout
        self._waiting: dict[int, asyncio.TimerHandle] = {}
        self.closed = 0

    def __call__(self) -> Any:
        protocol = self.factory()
        key = id(protocol)
        loop = asyncio.get_running_loop()
        self._waiting[key] = loop.call_later(self._timeout, self._expire, key, protocol)
        return protocol

    def seen(self, protocol: object) -> None:
        handle = self._waiting.pop(id(protocol), None)
        if handle is not None:
            handle.cancel()

    def _expire(self, key: int, protocol: Any) -> None:
        self._waiting.pop(key, None)
        transport = getattr(protocol, "transport", None)
        if transport is not None and not transport.is_closing():
            self.closed += 1
            log.info("closing a connection that sent no complete request in time")
            transport.close()


DEADLINE = web.AppKey("header_deadline", HeaderDeadline)


@web.middleware
async def mark(request: web.Request, handler: Any) -> web.StreamResponse:
    deadline = request.app.get(DEADLINE)
    if deadline is not None:
        deadline.seen(request.protocol)
    response: web.StreamResponse = await handler(request)
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

    def __init__(self, runner: web.AppRunner, server: asyncio.Server) -> None:
        self._runner = runner
        self._server = server
        self._reloader: asyncio.Task[None] | None = None

    async def close(self) -> None:
        self._server.close()
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        await self._runner.shutdown()
        await self._runner.cleanup()


async def start(app: web.Application, config: Config) -> Listener:
    """Set the app up and listen (TLS and the header deadline included)."""
    deadline = HeaderDeadline(config.client_header_timeout)
    app[DEADLINE] = deadline
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=config.keepalive_timeout,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        handle_signals=False,
    )
    await runner.setup()
    deadline.factory = runner.server
    context = None
    if config.tls_cert is not None and config.tls_key is not None:
        context = await asyncio.to_thread(tls_context, config.tls_cert, config.tls_key)
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            deadline, config.host, config.port, ssl=context, backlog=BACKLOG
        )
    except BaseException:
        await runner.cleanup()
        raise
    listener = Listener(runner, server)
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
        log.info("shutting down: finishing transfers in flight (up to %.0f s)", SHUTDOWN_TIMEOUT)
    finally:
        await listener.close()
