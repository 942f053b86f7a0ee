"""One connection's protocol: aiohttp's handler inside, the connection's bounds
around it.

Every protocol call is forwarded to aiohttp's handler. Around it the guard keeps
three bounds: a request head must arrive in time (aiohttp waits for one
indefinitely: a slow-loris client would hold the connection); a response must keep
moving (a client that takes no byte for ``send_timeout`` is cut and the file it
was sent is released); and the connection counts against its listener's bound
(see gate.py).
"""

from __future__ import annotations

import asyncio
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
        ended."""
        if self.idle():
            self.shed()
        else:
            self._reset()

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
            self.gate.stats.header_timeouts += 1
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
        self.gate.stats.send_timeouts += 1
        log.info(
            "closing a connection whose client took nothing for %.0f s (send_timeout)",
            self.gate.send_timeout,
        )
        self._reset()

    def _reset(self) -> None:
        # The request's task first: a loop.sendfile in progress waits on the socket
        # itself and would never wake once it is closed. Its cancellation unregisters
        # the socket in callbacks already scheduled, before the abort below.
        if self.task is not None and not self.task.done():
            self.task.cancel()
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
        self.address = client_address(_host(transport.get_extra_info("peername")))
        if not self.gate.admit(self):
            # Beyond the bound, and beyond the connections held to be answered: no
            # room left to read a request, only to reset.
            tcpinfo.reset_on_close(transport.get_extra_info("socket"))
            self.transport.abort()
            return
        self._made = True
        self._made_at = asyncio.get_running_loop().time()
        self._sock = transport.get_extra_info("socket")
        self._arm_head()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._made:
            return
        if not self.in_request:
            self._arm_head()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._made:
            return None
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
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
