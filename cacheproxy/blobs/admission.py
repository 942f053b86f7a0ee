"""Whether a miss may start a fill now: bounds that no request can push past.

A fill holds an upstream connection, a temp file and a reservation of disk space
until it ends, and a client that goes away leaves it running. So fills are bounded
in number, and the slots are shared fairly between clients, not first come:

- a client (its login, else its address; a peer node, by the name it signs) may
  have ``per_client`` fills running or waiting at once; past that, TOOMANYREQUESTS
  (so one client holds at most that many of the queue's places, too). While another
  client waits, its share shrinks: one running about its part of the slots beyond
  the reserve, among the clients running or waiting (``(running - reserve) /
  clients``, rounded up), is told TOOMANYREQUESTS too;
- ``reserve`` slots (an eighth, at least one) go only to a client running no fill:
  clients that stay connected to the downloads they hold cannot take every slot,
  and a newcomer starts at once;
- requests that must wait are served by client in turn, the client holding the
  fewest slots first, among equals the one served longest ago (``fairness.py``):
  a client holding many waits behind every client holding fewer;
- at most ``queued`` requests wait in all. A client asking when the queue is full
  takes the place of the newest request of the client that has the most running or
  waiting (that request is told TOOMANYREQUESTS), if that is more than it has
  itself, plus one; else it is told TOOMANYREQUESTS;
- a fill nobody reads any more (every client reading it went away) no longer counts
  against its starter's share. Once it has been so for ``grace`` seconds, and no
  holder list or piece request named it meanwhile (a swarm reads the owner's fill
  piece by piece, nobody reading it in between: :meth:`FillGate.named`), it gives
  its slot up to the first request that would have to wait for one: it is
  cancelled (its temp file and disk reservation go). A reader joining it before
  that makes it count again.

The node's own fills (client "": a prefetch) are not bounded per client, rank with
the clients that hold nothing, and are never put out of a full queue. Disk space
for what a fill announced it will write is the disk budget's (``disk.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from ..errors import TooManyRequests, UpstreamUnavailable
from ..fairness import FairQueue

#: Why a request was refused a slot (the label of the refusals on /metrics): the
#: client's own bound (shrunk while others wait), its place in a full queue taken
#: by a client that has less (its fair share of the queue), the whole queue.
REFUSALS = ("per_client", "fair_share", "queue")
RETRY_AFTER = {"Retry-After": "1"}
#: One slot in this many (at least one) is kept for clients running no fill.
RESERVE_SHARE = 8
#: Seconds a fill nobody reads keeps its slot: a swarm's next piece request, or a
#: client's retry, comes well within it (holders report every quarter second).
ABANDON_GRACE = 10.0
# The grace's timer fires this late: on time, a rounding may leave the grace unended.
TIMER_SLACK = 0.01


@dataclass(frozen=True)
class FillLimits:
    """How many fills may run, wait, and run or wait for one client; how long a
    fill nobody reads keeps its slot."""

    running: int = 128
    queued: int = 512
    per_client: int = 32
    grace: float = ABANDON_GRACE

    @property
    def reserve(self) -> int:
        """Slots only a client running no fill may take."""
        return max(self.running // RESERVE_SHARE, 1)


@dataclass
class FillGateStats:
    """What the gate did (for /metrics)."""

    #: Fills nobody read any more, cancelled to give their slot to a waiting request.
    preempted: int = 0
    #: Requests answered TOOMANYREQUESTS, by the bound they met (``REFUSALS``).
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))


class Slot:
    """One fill's (or stream-through's) hold on the gate, from ``enter`` to ``leave``."""

    __slots__ = ("_preempt", "abandoned", "asked", "cheap", "client", "released")

    def __init__(self, client: str) -> None:
        self.client = client
        #: Nobody reads the fill: it does not count against the client, and may be
        #: cancelled for a waiting request once the grace is over.
        self.abandoned = False
        self.released = False
        #: Cancelling it costs no upstream transfer (a fill fed by peers).
        self.cheap = False
        #: When its last reader left, or a peer last named its fill (the grace's start).
        self.asked = 0.0
        self._preempt: Callable[[], None] | None = None


class FillGate:
    """Slots for running fills, shared fairly between clients (see the module)."""

    def __init__(self, limits: FillLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._held = 0
        # client -> slots it holds that count (not abandoned); the node's own are not.
        self._counted: dict[str, int] = {}
        self._queue: FairQueue[asyncio.Future[Slot]] = FairQueue(dead=lambda f: f.done())
        # Abandoned slots, oldest first (a dict: ordered, O(1) removal).
        self._abandoned: dict[Slot, None] = {}
        # Wakes the waiting requests when an abandoned fill's grace ends.
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.stats = FillGateStats()

    async def enter(self, client: str) -> Slot:
        """A slot for a fill ``client`` starts ("": the node's own); waits in turn for
        one, or raises TOOMANYREQUESTS (with Retry-After) at a bound."""
        if self._closed:
            raise UpstreamUnavailable("proxy shutting down")
        self._admit(client)
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._queue.push(client, waiter)
        self._dispatch()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave(waiter.result())  # granted as the request gave up
            else:
                self._queue.remove(client, waiter)
            raise

    def leave(self, slot: Slot) -> None:
        """Give ``slot`` back (its fill ended); the next request in turn takes it."""
        if slot.released:
            return
        slot.released = True
        self._held -= 1
        if slot.abandoned:
            del self._abandoned[slot]
        else:
            self._uncount(slot.client)
        self._dispatch()

    def abandon(self, slot: Slot, preempt: Callable[[], None], cheap: bool = False) -> None:
        """Nobody reads ``slot``'s fill any more: it stops counting against its client,
        and ``preempt`` (which must cancel the fill) is called when a request needs
        the slot after the grace. ``cheap``: cancelling it costs no upstream transfer."""
        if slot.released or slot.abandoned:
            return
        slot.abandoned = True
        slot.cheap = cheap
        slot.asked = self._clock()
        slot._preempt = preempt
        self._uncount(slot.client)
        self._abandoned[slot] = None
        self._dispatch()

    def named(self, slot: Slot) -> None:
        """A peer asked for ``slot``'s fill (a holder list, a piece): its grace starts again."""
        slot.asked = self._clock()

    def rejoin(self, slot: Slot) -> None:
        """A reader came back to ``slot``'s fill: it counts against its client again
        (which may put that client past its bound for a while: it joined, not asked)."""
        if slot.released or not slot.abandoned:
            return
        slot.abandoned = False
        slot._preempt = None
        del self._abandoned[slot]
        if slot.client:
            self._counted[slot.client] = self._counted.get(slot.client, 0) + 1

    def close(self) -> None:
        """Shutting down: no slot is handed out any more (the fills being cancelled
        free theirs), and every waiting request is told so."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while (client := self._queue.next()) is not None:
            self._queue.take(client).set_exception(UpstreamUnavailable("proxy shutting down"))

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._queue)

    @property
    def abandoned(self) -> int:
        """Slots held by fills nobody reads."""
        return len(self._abandoned)

    def holding(self, client: str) -> int:
        """Slots ``client`` holds that count against it."""
        return self._counted.get(client, 0)

    def admits_at_once(self, client: str) -> bool:
        """Whether a request of ``client`` would be given a slot now: neither refused
        nor made to wait (for the links rule: under pressure, a digest this node does
        not hold must not be told apart from one it holds, by a 429 or by a wait)."""
        limits = self._limits
        if client and (
            self._outstanding(client) >= limits.per_client
            or self.holding(client) >= self._share(client)
        ):
            return False
        if len(self._queue):
            return False  # others wait: this one would wait its turn
        keep = limits.reserve if self._rank(client) else 0
        return limits.running - self._held > keep

    # --- policy ------------------------------------------------------------------

    def _admit(self, client: str) -> None:
        """Raise TOOMANYREQUESTS if ``client`` may not ask for a slot now."""
        limits = self._limits
        if client and self._outstanding(client) >= limits.per_client:
            self._refuse("per_client", "too many downloads for this client at once")
        if client and self.holding(client) >= self._share(client):
            self._refuse("per_client", "too many downloads for this client while others wait")
        # Free slots and abandoned ones beyond what the waiting requests will take:
        # no bound on waiting applies yet (at most that many more wait).
        spare = limits.running - self._held + len(self._abandoned) - len(self._queue)
        if spare > 0 or len(self._queue) < limits.queued:
            return
        rival = self._rival(client) if client else None
        if rival is None:
            self._refuse("queue", "too many downloads at once")
        waiter = self._queue.take_newest(rival)
        if waiter is not None:
            self.stats.refused["fair_share"] += 1
            message = "too many downloads at once; this client has many"
            waiter.set_exception(TooManyRequests(message, headers=dict(RETRY_AFTER)))

    def _share(self, client: str) -> int:
        """How many running fills ``client`` may ask beyond: ``per_client``, and while
        another client waits, about its part of the slots beyond the reserve among
        the clients running or waiting (rounded up, at least one)."""
        limits = self._limits
        if not any(other != client for other in self._queue.clients()):
            return limits.per_client
        clients = len({client, *self._counted, *self._queue.clients()} - {""})
        part = -(-(limits.running - limits.reserve) // clients)
        return max(min(limits.per_client, part), 1)

    def _outstanding(self, client: str) -> int:
        return self.holding(client) + self._queue.waiting(client)

    def _rival(self, client: str) -> str | None:
        """The client whose newest waiting request ``client`` may take the place of
        in a full queue: the one with the most running or waiting, if more than
        ``client`` would have (the node's own requests are never put out)."""
        mine = self._outstanding(client) + 1
        rival, most = None, mine
        for other in self._queue.clients():
            if other and other != client and self._outstanding(other) > most:
                rival, most = other, self._outstanding(other)
        return rival

    def _rank(self, client: str) -> int:
        # Fewest slots first; the node's own requests rank with those holding nothing.
        return self._counted.get(client, 0) if client else 0

    def _dispatch(self) -> None:
        """Hand slots to the waiting requests in turn: free ones first, then ones
        that abandoned fills past their grace hold (each cancelled for its request)."""
        now = self._clock()
        while not self._closed and (client := self._queue.next(self._rank)) is not None:
            if not self._room(client, now):
                # The next in turn holds the fewest: nobody after it may take one either.
                self._wake_at_grace(now)
                return
            waiter = self._queue.take(client)
            slot = Slot(client)
            self._held += 1
            if client:
                self._counted[client] = self._counted.get(client, 0) + 1
            waiter.set_result(slot)

    def _room(self, client: str, now: float) -> bool:
        """Whether a slot may go to ``client`` now (one is freed by cancelling an
        abandoned fill if needed): beyond the reserve, unless it runs no fill."""
        keep = self._limits.reserve if self._rank(client) else 0
        free = self._limits.running - self._held
        if free > keep:
            return True
        grace = self._limits.grace
        ripe = [s for s in self._abandoned if now - s.asked >= grace]
        if free + len(ripe) <= keep:
            return False
        if free <= 0:
            # One fed by peers first (the blob is still in the cluster), else the one
            # abandoned longest ago.
            self._preempt(next((s for s in ripe if s.cheap), ripe[0]))
        return True

    def _preempt(self, slot: Slot) -> None:
        """Cancel ``slot``'s abandoned fill and free its slot."""
        del self._abandoned[slot]
        slot.released = True
        self._held -= 1
        self.stats.preempted += 1
        preempt, slot._preempt = slot._preempt, None
        if preempt is not None:
            preempt()

    def _wake_at_grace(self, now: float) -> None:
        """Dispatch again when the first abandoned fill's grace ends (a request waits)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        grace = self._limits.grace
        ends = [s.asked + grace for s in self._abandoned if now - s.asked < grace]
        if not ends:
            return
        loop = asyncio.get_running_loop()  # a request waits: in the loop
        self._timer = loop.call_later(min(ends) - now + TIMER_SLACK, self._dispatch)

    def _uncount(self, client: str) -> None:
        if not client:
            return
        left = self._counted[client] - 1
        if left:
            self._counted[client] = left
        else:
            del self._counted[client]

    def _refuse(self, reason: str, message: str) -> NoReturn:
        self.stats.refused[reason] += 1
        raise TooManyRequests(message, headers=dict(RETRY_AFTER))
