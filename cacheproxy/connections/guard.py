"""One connection's protocol: aiohttp's handler inside, the connection's bounds
around it.

Every protocol call is forwarded to aiohttp's handler. Around it the guard keeps
three bounds: a request head must arrive in time (aiohttp waits for one
indefinitely: a slow-loris client would hold the connection); a response must keep
moving (a client that takes no byte for ``send_timeout`` is cut and the file it
was sent is released); and the connection counts against its listener's bound
(see gate.py). On a TLS listener the guard runs the handshake itself
(``loop.start_tls`` on the accepted socket), so that a socket counts from its
accept, not from a handshake that a stranger may never finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, cast

from ..fairness import client_address
from . import tcpinfo

if TYPE_CHECKING:
    from .gate import Gate

log = logging.getLogger(__name__)

# Seconds a new connection may wait to send its first request before it counts as
# idle (sheddable at the bound): a client's first request follows its connect at
# once, and a connection closed under it, never used, is not retried.
FRESH_GRACE = 1.0


class Guard(asyncio.Protocol):
    """aiohttp's protocol for one connection, held to the connection's bounds."""

    def __init__(self, gate: Gate, inner: Any) -> None:
        self.gate = gate
        self.inner = inner
        # Admitted beyond the listener's bound: its one request is answered 503.
        self.over = False
        self.in_request = False
        # The task running the request in the app, while it does.
        self.task: asyncio.Task[Any] | None = None
        self.transport: asyncio.Transport | None = None
        # Whose share of the listener it counts in (fairness.client_address).
        self.address = ""
        # The TLS handshake, while it runs.
        self._upgrade: asyncio.Task[None] | None = None
        # Under TLS, bytes that came before the handshake could be started (the
        # ClientHello: uvloop reads from right after connection_made, so the socket
        # is paused at its first read), and what the TLS layer delivered between the
        # handshake's end and this guard's task taking over (a read at most each);
        # None when nothing is held.
        self._hello: list[bytes] | None = None
        self._early: list[bytes] | None = None
        self._lost = False
        self._made = False
        self._made_at = 0.0
        # A request was answered on it: it is a kept-alive connection when idle.
        self._kept = False
        self._sock: Any = None
        self._head: asyncio.TimerHandle | None = None
        self._watch: asyncio.TimerHandle | None = None
        # The send watch: bytes the client had acknowledged, and when that moved.
        self._acked = -1
        self._moved = 0.0
        # aiohttp cancels no handler when its client goes away (handler_cancellation
        # is off, on purpose: most work must finish); a request that only waits for
        # its client's sake (a blob's next bytes, a fill slot) watches this instead.
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- the request's life, told by the ``mark`` middleware --------------------------

    def started(self, task: asyncio.Task[Any] | None) -> None:
        self.in_request = True
        self._kept = True
        self.task = task
        self._disarm_head()
        self.gate.busy(self)
        if self._watch is None and self.gate.send_timeout > 0 and self._sock is not None:
            loop = asyncio.get_running_loop()
            self._acked, self._moved = -1, loop.time()
            self._watch = loop.call_later(self.gate.watch_every, self._check)

    def finished(self) -> None:
        self.in_request = False
        self.task = None
        self.gate.wait(self)

    def idle(self) -> bool:
        """Kept alive waiting for a request, or new and silent past FRESH_GRACE, with
        no response in progress: aiohttp's own test before its keep-alive close (an
        unfinished future for the next message, ``RequestHandler._process_keepalive``)."""
        waiter = getattr(self.inner, "_waiter", None)
        if self.in_request or waiter is None or waiter.done():
            return False
        return self._kept or asyncio.get_running_loop().time() - self._made_at >= FRESH_GRACE

    def shed(self) -> None:
        """Close an idle connection now, as aiohttp's keep-alive timeout would: a
        client must expect that of an idle connection (RFC 9112 section 9.3.1) and
        retries its request on a new one."""
        self.inner.force_close()

    def cut(self) -> None:
        """Close the connection now, idle or not, for a newcomer's share (gate.py):
        an idle one as a keep-alive timeout would; else with a reset, its request
        (or its handshake) ended."""
        if self.idle():
            self.shed()
        else:
            self._reset()

    async def abandon(self) -> None:
        """End a TLS handshake in progress (the listener closes)."""
        task = self._upgrade
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the head deadline ------------------------------------------------------------

    def _arm_head(self) -> None:
        if self._head is None:
            loop = asyncio.get_running_loop()
            self._head = loop.call_later(self.gate.head_timeout(self), self._head_expired)

    def _disarm_head(self) -> None:
        if self._head is not None:
            self._head.cancel()
            self._head = None

    def _head_expired(self) -> None:
        self._head = None
        if self.transport is not None and not self.transport.is_closing():
            self.gate.stats.count_header_timeout()
            log.info("closing a connection that sent no complete request head in time")
            self.transport.close()

    # -- the send watch ---------------------------------------------------------------

    def _check(self) -> None:
        """Every quarter of ``send_timeout`` while a response goes out: has the client
        taken a byte since? Nothing queued for it counts as moving (a fill's bytes
        not here yet are no fault of the client's)."""
        self._watch = None
        transport = self.transport
        if transport is None:
            return
        state = tcpinfo.sending(self._sock)
        if state is None:
            return
        acked, queued = state
        loop = asyncio.get_running_loop()
        now = loop.time()
        if acked != self._acked or not queued:
            self._acked, self._moved = acked, now
            if not queued and not self.in_request and not transport.get_write_buffer_size():
                return  # nothing owed: watched again from the next request
        elif now - self._moved >= self.gate.send_timeout:
            self._stalled()
            return
        self._watch = loop.call_later(self.gate.watch_every, self._check)

    def _stalled(self) -> None:
        self.gate.stats.count_send_timeout()
        log.info(
            "closing a connection whose client took nothing for %.0f s (send_timeout)",
            self.gate.send_timeout,
        )
        self._reset()

    def _reset(self) -> None:
        # The request's task first: a loop.sendfile in progress waits on the socket
        # itself and would never wake once it is closed. Its cancellation unregisters
        # the socket in callbacks already scheduled, before the abort below.
        for task in (self.task, self._upgrade):
            if task is not None and not task.done():
                task.cancel()
        tcpinfo.reset_on_close(self._sock)
        asyncio.get_running_loop().call_soon(self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass:
        # uvloop's TCPTransport only behaves like one.
        self.transport = cast(asyncio.Transport, transport)
        self._sock = transport.get_extra_info("socket")
        self.address = client_address(_host(transport.get_extra_info("peername")))
        if self.gate.tls is None:
            self._serve(self.transport)
            return
        # Nothing is read before start_tls puts the TLS protocol in (the ClientHello
        # is its to read). asyncio starts reading after this call returns, and is
        # paused here; uvloop reads already: its first bytes are held (data_received).
        self.transport.pause_reading()
        if not self.gate.handshake(self):
            self._refuse()
            return
        self._hello = []
        self._upgrade = asyncio.create_task(self._handshake(self.transport))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        """TLS on the accepted socket, then served; bounded by client_header_timeout
        (asyncio's own default is 60 s)."""
        assert self.gate.tls is not None
        if self._lost:  # gone before its hello (the gate counts it no more)
            return
        loop = asyncio.get_running_loop()
        tls = None
        # Runs after start_tls's first step below (callbacks run in the order they
        # were scheduled), which puts the TLS protocol in, before the callbacks that
        # step schedules, which start the handshake and resume reading.
        loop.call_soon(self._hand_over, raw)
        try:
            tls = await loop.start_tls(
                raw,
                self,
                self.gate.tls,
                server_side=True,
                ssl_handshake_timeout=self.gate.header_timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError, a reset, the timeout
            log.debug("TLS handshake failed: %r", exc)
        except Exception as exc:  # nothing to answer, and nobody to answer it to
            log.warning("TLS handshake failed: %r", exc)
        finally:
            self.gate.handshake_done(self)
            self._upgrade = None
        # start_tls answers None for a connection lost as its handshake ended.
        if tls is None or self._lost or tls.is_closing():
            raw.abort()
            self.gate.gone(self)
            return
        self._serve(tls)

    def _hand_over(self, raw: asyncio.Transport) -> None:
        """Give the bytes held before the handshake to the TLS protocol, through
        the buffered-protocol interface both loops' TLS protocols read with."""
        hello, self._hello = self._hello or [], None
        self._early = []
        protocol: Any = raw.get_protocol()
        if not hello or protocol is self or raw.is_closing():
            return
        data = memoryview(b"".join(hello))
        while data:
            buffer = protocol.get_buffer(len(data))
            size = min(len(buffer), len(data))
            buffer[:size] = data[:size]
            protocol.buffer_updated(size)
            data = data[size:]

    def _serve(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if not self.gate.admit(self):
            # Beyond the bound, and beyond the connections held to be answered: no
            # room left to read a request, only to reset.
            self._refuse()
            return
        self._made = True
        self._made_at = asyncio.get_running_loop().time()
        self._arm_head()
        self.inner.connection_made(transport)
        early, self._early = self._early or [], None
        for data in early:
            self.data_received(data)

    def _refuse(self) -> None:
        tcpinfo.reset_on_close(self._sock)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._made:
            if self._hello is not None and self.transport is not None:
                self._hello.append(data)
                self.transport.pause_reading()
            elif self._early is not None:
                self._early.append(data)
            return
        if not self.in_request:
            self._arm_head()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._made:
            # Before its handshake: the transport closes itself. After it, the TLS
            # layer shuts down whatever the protocol says.
            return None
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._disarm_head()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.transport = None
        self.task = None
        if not self.gone.done():
            self.gone.set_result(None)
        self.gate.gone(self)
        if self._made:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._made:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._made:
            self.inner.resume_writing()


def _host(peername: Any) -> str | None:
    """The address of a socket's peer name ((host, port[, flow, scope]) for IP)."""
    if isinstance(peername, tuple | list) and peername:
        return str(peername[0])
    return peername if isinstance(peername, str) else None
