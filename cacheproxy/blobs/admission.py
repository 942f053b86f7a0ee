"""Whether a miss may start a fill now: bounds that no request can push past.

A fill holds an upstream connection, a temp file and a reservation of disk space
until it ends, and a client that goes away leaves it running. So fills are bounded
in number, and the slots are shared fairly between clients, not first come:

- a client (its login, else its address) may have ``per_client`` fills running or
  waiting at once; past that, TOOMANYREQUESTS (so one client holds at most that many
  of the queue's places, too);
- requests that must wait are served by client in turn, the client holding the
  fewest slots first, among equals the one served longest ago (``fairness.py``):
  a client holding many waits behind every client holding fewer;
- at most ``queued`` requests wait in all. A client asking when the queue is full
  takes the place of the newest request of the client that has the most running or
  waiting (that request is told TOOMANYREQUESTS), if that is more than it has
  itself, plus one; else it is told TOOMANYREQUESTS;
- a fill nobody reads any more (every client reading it went away) no longer counts
  against its starter's share, and gives its slot up to the first request that
  would have to wait for one: it is cancelled (its temp file and disk reservation
  go); a reader joining it before that makes it count again.

Requests for a peer node (client "") are other nodes' clients, already shared out
at their node: they are not bounded per client and wait in turn with the clients
that hold nothing. Disk space is reserved for what a fill announced it will write.
(A digest the upstream just refused under a repository is answered from memory
for a while: ``links.py``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from ..errors import TooManyRequests, UpstreamUnavailable
from ..fairness import FairQueue
from ..sizes import DiskSpace, largest_size

#: Why a request was refused a slot (the label of the refusals on /metrics): the
#: client's own bound, its place in a full queue taken by a client that has less
#: (its fair share of the queue), the whole queue.
REFUSALS = ("per_client", "fair_share", "queue")
RETRY_AFTER = {"Retry-After": "1"}


@dataclass(frozen=True)
class FillLimits:
    """How many fills may run, wait, and run or wait for one client."""

    running: int = 128
    queued: int = 512
    per_client: int = 32


@dataclass
class FillGateStats:
    """What the gate did (for /metrics)."""

    #: Fills nobody read any more, cancelled to give their slot to a waiting request.
    preempted: int = 0
    #: Requests answered TOOMANYREQUESTS, by the bound they met (``REFUSALS``).
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))


class Slot:
    """One fill's (or stream-through's) hold on the gate, from ``enter`` to ``leave``."""

    __slots__ = ("_preempt", "abandoned", "cheap", "client", "released")

    def __init__(self, client: str) -> None:
        self.client = client
        #: Nobody reads the fill: it does not count against the client, and may be
        #: cancelled for a waiting request.
        self.abandoned = False
        self.released = False
        #: Cancelling it costs no upstream transfer (a fill fed by peers).
        self.cheap = False
        self._preempt: Callable[[], None] | None = None


class FillGate:
    """Slots for running fills, shared fairly between clients (see the module)."""

    def __init__(self, limits: FillLimits) -> None:
        self._limits = limits
        self._held = 0
        # client -> slots it holds that count (not abandoned); peers ("") are not counted.
        self._counted: dict[str, int] = {}
        self._queue: FairQueue[asyncio.Future[Slot]] = FairQueue(dead=lambda f: f.done())
        # Abandoned slots, oldest first (a dict: ordered, O(1) removal).
        self._abandoned: dict[Slot, None] = {}
        self._closed = False
        self.stats = FillGateStats()

    async def enter(self, client: str) -> Slot:
        """A slot for a fill ``client`` starts ("": a peer node); waits in turn for
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
        the slot. ``cheap``: cancelling it costs no upstream transfer."""
        if slot.released or slot.abandoned:
            return
        slot.abandoned = True
        slot.cheap = cheap
        slot._preempt = preempt
        self._uncount(slot.client)
        self._abandoned[slot] = None
        self._dispatch()

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
        if client and self._outstanding(client) >= limits.per_client:
            return False
        return limits.running - self._held + len(self._abandoned) - len(self._queue) > 0

    # --- policy ------------------------------------------------------------------

    def _admit(self, client: str) -> None:
        """Raise TOOMANYREQUESTS if ``client`` may not ask for a slot now."""
        limits = self._limits
        if client and self._outstanding(client) >= limits.per_client:
            self._refuse("per_client", "too many downloads for this client at once")
        # Free slots and abandoned ones beyond what the waiting requests will take:
        # this request is served at once, no bound on waiting applies.
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

    def _outstanding(self, client: str) -> int:
        return self.holding(client) + self._queue.waiting(client)

    def _rival(self, client: str) -> str | None:
        """The client whose newest waiting request ``client`` may take the place of
        in a full queue: the one with the most running or waiting, if more than
        ``client`` would have (peers are never put out: they are not one client)."""
        mine = self._outstanding(client) + 1
        rival, most = None, mine
        for other in self._queue.clients():
            if other and other != client and self._outstanding(other) > most:
                rival, most = other, self._outstanding(other)
        return rival

    def _rank(self, client: str) -> int:
        # Fewest slots first. A peer's request ranks with the clients that hold
        # nothing: it stands for other nodes' clients, counted at their node.
        return self._counted.get(client, 0) if client else 0

    def _dispatch(self) -> None:
        """Hand slots to the waiting requests in turn: free ones first, then ones
        that abandoned fills hold (each cancelled for its request)."""
        while not self._closed and (client := self._queue.next(self._rank)) is not None:
            if self._held >= self._limits.running and not self._preempt():
                return
            waiter = self._queue.take(client)
            slot = Slot(client)
            self._held += 1
            if client:
                self._counted[client] = self._counted.get(client, 0) + 1
            waiter.set_result(slot)

    def _preempt(self) -> bool:
        """Cancel one abandoned fill and free its slot: one fed by peers first (the
        blob is still in the cluster), else the one abandoned longest ago."""
        if not self._abandoned:
            return False
        slot = next((s for s in self._abandoned if s.cheap), None) or next(iter(self._abandoned))
        del self._abandoned[slot]
        slot.released = True
        self._held -= 1
        self.stats.preempted += 1
        preempt, slot._preempt = slot._preempt, None
        if preempt is not None:
            preempt()
        return True

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


class DiskBudget:
    """Disk space for fills: ``min_free`` on the disk, and the cache's ``limit``
    counting what running fills announced they will write.

    ``min_free`` is the largest of its terms, each bytes ("10GiB") or a share of the
    file system ("20%"), resolved against the file system's size at each check (a
    volume grown online moves it). The default keeps the disk clear of the kubelet's
    default hard eviction thresholds (``nodefs.available<10%``,
    ``imagefs.available<15%``): a proxy that filled a node's disk to 1 GiB would get
    the node's pods evicted.
    """

    def __init__(
        self, limit: int | None, min_free: Sequence[str], disk: Callable[[], DiskSpace]
    ) -> None:
        self.limit = limit
        self._min_free = tuple(min_free)
        self._disk = disk
        #: Bytes running fills that will be kept announced: they count against the limit.
        self.reserved = 0
        #: Bytes every running fill announced (kept or not): they will take disk space.
        self.outstanding = 0

    def min_free(self, total: int) -> int:
        """The bytes to keep free on a file system of ``total`` bytes."""
        return largest_size(self._min_free, total)

    def space(self) -> DiskSpace:
        """The file system's free and total bytes now (one ``statvfs``)."""
        return self._disk()

    def shortfall(self, space: DiskSpace) -> int:
        """Bytes a disk of ``space`` is short of ``min_free`` (0 when it is not),
        counting what running fills will still write (whole: a little early, never
        late): what the keeper frees by eviction."""
        return max(self.min_free(space.total) - (space.free - self.outstanding), 0)

    def admits_fill(self) -> bool:
        """Whether a new fill may write to disk (else the miss streams through)."""
        # What running fills will still write is as good as gone (counted whole: a
        # little early, never late).
        if self.shortfall(self._disk()) > 0:
            return False
        # Running fills alone could fill the whole cache: nothing more goes to disk.
        return self.limit is None or self.reserved < self.limit

    def room_for_import(self, used: int) -> int:
        """Bytes an import may add to a cache holding ``used`` bytes."""
        free, total = self._disk()
        room = free - self.min_free(total)
        if self.limit is not None:
            room = min(room, self.limit - used)
        return max(room, 0)

    def keeps(self, size: int) -> bool:
        """Whether a blob of ``size`` bytes may be kept at all (not past the limit)."""
        return self.limit is None or size <= self.limit

    def reserve(self, size: int) -> bool:
        """A running fill announced ``size`` bytes: they count against the disk until
        it ends, and against the limit if the blob may be kept (False: it may not)."""
        self.outstanding += size
        kept = self.keeps(size)
        if kept:
            self.reserved += size
        return kept

    def release(self, size: int, kept: bool) -> None:
        """The fill that reserved ``size`` bytes (``kept``: as :meth:`reserve` said) ended."""
        self.outstanding -= size
        if kept:
            self.reserved -= size
