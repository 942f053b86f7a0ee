"""Each listener's connections: how many are open, the bound on them, the idle ones
closed first at the bound, each address's share, and the answer beyond it.

At the bound a new connection takes the place of the connection that has waited
longest for a request (new or kept alive), so transfers in progress keep going.
When every connection is busy, the new one is still read. Its request, from an
address holding less than its share of the bound, takes a place of the address
holding the most (see shares.py): that address's idle connection if it has one,
else its newest busy one, whose request is cut. Otherwise it is answered 503
``TOOMANYREQUESTS`` with ``Retry-After`` and the connection closed (a probe,
``/healthz`` or ``/readyz``, is answered as usual, so the kubelet does not restart a
node that is only busy, and takes no place). Only beyond ``OVERFLOW`` such
connections at once is a connection reset unread.

On a TLS listener the handshake is the guard's own, so a socket counts from its
accept: handshakes in progress and busy connections together stay within the
bound plus ``HANDSHAKES``; beyond, a socket is reset at once (or, from an address
holding less than its share of the handshakes, takes the place of the newest
handshake of the address holding the most).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import TooManyRequests
from ..wire import CLOSE_CONNECTION, CONNECTION_GONE, OPEN_PATHS, error_response
from .guard import Guard
from .shares import Shares

log = logging.getLogger(__name__)

# Connections beyond a listener's bound held at once just long enough to read their
# request and answer it; beyond these, a reset.
OVERFLOW = 64
# Seconds such a connection has to send its request head.
OVERFLOW_HEAD_TIMEOUT = 5.0
# Idle connections looked at, oldest first, to make room for a new one.
SHED_SCAN = 16
# Seconds a refused client is told to wait: idle connections go at once, so at the
# bound every slot is a transfer in progress.
RETRY_AFTER = "2"
# TLS handshakes a listener holds beyond its bound (less its busy connections): at
# the bound a new connection can still finish its handshake, to take an idle
# connection's place, its address's share, or its 503. A handshake holds one
# descriptor (an idle connection one too: the second is a busy one's blob), so the
# listener's sockets fit in two per connection of the bound plus these, which
# budget.HEADROOM covers.
HANDSHAKES = 16


class ConnectionsFull(TooManyRequests):
    """Every connection of the listener is busy. 503 with Retry-After (RFC 9110
    section 15.6.4: the server's capacity, not the client's rate), under the OCI
    code for too many requests."""

    status = 503
    default_message = "too many connections: try again later"


@dataclass
class GateStats:
    """What a listener's bounds did (``cacheproxy_connections_*`` on /metrics)."""

    refused: int = 0
    shed: int = 0
    # Connections (and handshakes) closed for a newcomer's share of the bound.
    displaced: int = 0
    send_timeouts: int = 0
    header_timeouts: int = 0

    def count_refused(self) -> None:
        self.refused += 1

    def count_shed(self) -> None:
        self.shed += 1

    def count_header_timeout(self) -> None:
        self.header_timeouts += 1

    def count_send_timeout(self) -> None:
        self.send_timeouts += 1


class Gate:
    """One listener's connections and their bounds."""

    def __init__(
        self,
        name: str,
        bound: int,
        header_timeout: float,
        send_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.bound = bound
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        # The listener's TLS (its handshakes run in the guards), or None.
        self.tls = tls
        # A stall is seen between send_timeout and 1.25 times it after the last byte.
        self.watch_every = send_timeout / 4
        self.stats = GateStats()
        self._served: set[Guard] = set()
        self._over: set[Guard] = set()
        # Served connections waiting for a request, longest waiting first.
        self._idle: OrderedDict[Guard, None] = OrderedDict()
        # The served connections by address, and the TLS handshakes in progress.
        self._shares: Shares[Guard] = Shares()
        self._handshakes: Shares[Guard] = Shares()

    @property
    def open(self) -> int:
        return len(self._served) + len(self._over)

    @property
    def waiting(self) -> int:
        """Served connections waiting for a request (new, or kept alive)."""
        return len(self._idle)

    @property
    def handshaking(self) -> int:
        """TLS handshakes in progress."""
        return self._handshakes.total

    def handshakes(self) -> list[Guard]:
        """The guards whose TLS handshake is in progress."""
        return self._handshakes.all()

    def head_timeout(self, guard: Guard) -> float:
        if guard.over:
            return min(self.header_timeout, OVERFLOW_HEAD_TIMEOUT)
        return self.header_timeout

    def admit(self, guard: Guard) -> bool:
        """Count a new connection in (``guard.over`` set if beyond the bound); False
        when there is no room even to answer it."""
        if len(self._served) < self.bound or self._shed_one():
            self._serve(guard)
            return True
        if len(self._over) >= OVERFLOW:
            self.stats.count_refused()
            return False
        guard.over = True
        self._over.add(guard)
        return True

    def promote(self, guard: Guard) -> bool:
        """A request came on a connection admitted beyond the bound: served after
        all if there is room now, an idle connection to shed, or its address's share
        to take; False: it is answered 503. Shares are taken for a request only, so
        a connection that sends none, or a probe, cuts nobody's transfer."""
        if not (len(self._served) < self.bound or self._shed_one() or self._take_share(guard)):
            return False
        self._over.discard(guard)
        guard.over = False
        self._serve(guard)
        return True

    def _serve(self, guard: Guard) -> None:
        self._served.add(guard)
        self._idle[guard] = None
        self._shares.add(guard.address, guard)

    def handshake(self, guard: Guard) -> bool:
        """Count a TLS handshake in; False when there is no room for it (the socket
        is then reset unread)."""
        room = self.bound + HANDSHAKES - (len(self._served) - len(self._idle))
        if self._handshakes.total < room or self._take_handshake(guard, room):
            self._handshakes.add(guard.address, guard)
            return True
        self.stats.refused += 1
        return False

    def handshake_done(self, guard: Guard) -> None:
        """The handshake ended, whichever way (the guard is admitted next, or gone)."""
        self._handshakes.remove(guard.address, guard)

    def busy(self, guard: Guard) -> None:
        self._idle.pop(guard, None)

    def wait(self, guard: Guard) -> None:
        if guard in self._served:
            self._idle[guard] = None
            self._idle.move_to_end(guard)

    def gone(self, guard: Guard) -> None:
        self._served.discard(guard)
        self._over.discard(guard)
        self._idle.pop(guard, None)
        self._shares.remove(guard.address, guard)
        self._handshakes.remove(guard.address, guard)

    def _shed_one(self) -> bool:
        for guard in list(itertools.islice(self._idle, SHED_SCAN)):
            if guard.idle():
                self.gone(guard)
                self.stats.count_shed()
                guard.shed()
                return True
        return False

    def _take_share(self, guard: Guard) -> bool:
        """Every connection busy: close one of the address holding the most, if the
        asker's address holds less than its share (shares.py). Its idle one if it
        has one; else its newest busy one, whose request is cut. Cutting a transfer
        is acceptable here: that address holds more than its share of a bound every
        client needs, and left alone it would hold all of it (a slow reader, a join
        of one slow fill, a body that never ends); its oldest transfers, begun while
        there was room, go on."""
        rival = self._shares.rival(guard.address, self.bound)
        if rival is None:
            return False
        victim = next((g for g in self._shares.items(rival) if g.idle()), None)
        if victim is None:
            victim = self._shares.newest(rival)
        assert victim is not None
        log.info(
            "the %s listener is at its bound: closing a connection of %s (of %d) for one"
            " of %s (of %d)",
            self.name,
            rival,
            self._shares.count(rival),
            guard.address,
            self._shares.count(guard.address),
        )
        self.gone(victim)
        self.stats.displaced += 1
        victim.cut()
        return True

    def _take_handshake(self, guard: Guard, room: int) -> bool:
        """No room for a handshake: the newest of the address holding the most goes,
        if the newcomer's holds less than its share of them."""
        rival = self._handshakes.rival(guard.address, room)
        victim = self._handshakes.newest(rival) if rival is not None else None
        if victim is None:
            return False
        self.gone(victim)
        self.stats.displaced += 1
        victim.cut()
        return True


class Connections:
    """The gates of the listeners (client, peer)."""

    def __init__(self) -> None:
        self.gates: dict[str, Gate] = {}

    def factory(self, gate: Gate, make: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of ``gate``'s listener: aiohttp's handler from
        ``make``, guarded."""
        self.gates[gate.name] = gate

        def build() -> asyncio.Protocol:
            return Guard(gate, make())

        return build

    async def close(self) -> None:
        """End the TLS handshakes in progress (the listeners are closed: nothing
        else would, before their timeout)."""
        guards = [guard for gate in self.gates.values() for guard in gate.handshakes()]
        await asyncio.gather(*(guard.abandon() for guard in guards))


CONNECTIONS = web.AppKey("connections", Connections)


def guard_of(request: web.BaseRequest) -> Guard | None:
    """The guard of the request's connection (the transport's protocol, under TLS
    too), or None when the connection is gone or not guarded."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, Guard) else None


@web.middleware
async def mark(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells each connection's guard when its request runs in the app, answers the
    connections admitted beyond the bound, and closes the connection after an
    answer that asks for it (``CLOSE_CONNECTION``)."""
    guard = guard_of(request)
    if guard is None:
        response = await handler(request)
    elif guard.over and (request.path in OPEN_PATHS or not guard.gate.promote(guard)):
        return await _refuse(request, handler, guard.gate)
    else:
        guard.started(asyncio.current_task())
        request[CONNECTION_GONE] = guard.gone
        try:
            response = await handler(request)
        finally:
            guard.finished()
    if request.get(CLOSE_CONNECTION):
        # Connection: close, and aiohttp closes once the answer is written (RFC 9112
        # section 9.6); with no body lingering (server.py), at once.
        response.force_close()
    return response


async def _refuse(request: web.Request, handler: Handler, gate: Gate) -> web.StreamResponse:
    if request.path in OPEN_PATHS:
        response = await handler(request)
    else:
        gate.stats.count_refused()
        log.warning(
            "the %s listener is at its bound of %d busy connections: answering 503",
            gate.name,
            gate.bound,
        )
        err = ConnectionsFull(headers={"Retry-After": RETRY_AFTER})
        response = error_response(err, head=request.method == "HEAD")
    response.force_close()
    return response
