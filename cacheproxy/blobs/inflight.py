"""The second link: fills in flight. Join the one bringing a digest in, or start it.

A new fill is fed by the links after this one (peers, then the upstream). When the
disk is too full to cache a miss, this link steps aside and the next link streams
the blob through uncached: the stream-through is just the rest of the chain. How
many fills run and wait, and for whom, is the gate's (``admission.py``): a fill
nobody reads any more gives its slot up to a request that would wait for one.
What follows a fill's end elsewhere in the node (its digest linked, the keeper's
look, an upload to the shared tier) hears of it through :class:`FillEvents`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..accounting import Accounting, NullAccounting, Origin
from ..errors import BlobUnknown, RegistryError
from ..sizes import DiskSpace
from ..store.files import BlobStore
from ..upstream.client import Upstream
from .admission import FillGate, FillLimits, Slot
from .disk import DiskBudget
from .fill import Fill
from .fillbody import FillBody
from .fillstate import FillOptions, FillState, FillStats
from .local import FileBody
from .segments import RangeSupport
from .source import Body, Feed, Remote, Sink, Want

log = logging.getLogger(__name__)

# A fill in the registry: (digest, upstream, fed through peers).
Key = tuple[str, str, bool]


class FillEvents(Protocol):
    """What the rest of the node hears of the fills (the composition root's)."""

    async def vouched(self, fill: Fill) -> None:
        """``fill``'s blob matched its digest under its pair, and goes into the store
        next (awaited first)."""

    async def committed(self, fill: Fill) -> None:
        """``fill``'s blob is verified and kept in the store (before any of its readers
        has the last byte: awaited)."""

    def failed(self, fill: Fill) -> None:
        """``fill`` ended with ``fill.error``."""


class _Unheard:
    """Nobody listens (a tool's fills, a test's)."""

    async def vouched(self, fill: Fill) -> None:
        return None

    async def committed(self, fill: Fill) -> None:
        return None

    def failed(self, fill: Fill) -> None:
        return None


class Fills:
    """The registry of running fills: at most one per digest and feed kind, owned here.

    A fill fed through peers is kept apart from one fed straight from the upstream:
    a peer's request joins only the latter. With two views of membership, two nodes
    could otherwise each wait on the other's fill.
    """

    def __init__(
        self,
        store: BlobStore,
        accounting: Accounting | None = None,
        options: FillOptions | None = None,
        limits: FillLimits | None = None,
        budget: DiskBudget | None = None,
        events: FillEvents | None = None,
    ) -> None:
        self.store = store
        self.options = options or FillOptions()
        #: Upstreams that answered a range wrongly: their blobs come in one stream.
        self.ranges = RangeSupport()
        self.accounting: Accounting = accounting or NullAccounting()
        self.stats = FillStats()
        self.gate = FillGate(limits or FillLimits())
        self.budget = budget or DiskBudget(None, (), lambda: DiskSpace(1, 1))
        self._events: FillEvents = events if events is not None else _Unheard()
        # Upstreams never share a fill: a slow or refusing registry named by one
        # request must not hold up or fail another's.
        self._fills: dict[Key, _Lease] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def running(self, want: Want, peer_fed_too: bool = True) -> Fill | None:
        """The fill bringing ``want`` in from its upstream, if any (straight from the
        upstream first)."""
        key, upstream = str(want.digest), want.upstream.name
        direct = self._fills.get((key, upstream, False))
        if direct is not None or not peer_fed_too:
            return direct.fill if direct is not None else None
        fed = self._fills.get((key, upstream, True))
        return fed.fill if fed is not None else None

    def named(self, want: Want) -> None:
        """A peer named ``want``'s digest (a holder list, a piece request): it reads
        the running fill piece by piece, nobody reading it in between, so the fill
        keeps its slot for the gate's grace from now (it is not abandoned)."""
        for peer_fed in (False, True):
            lease = self._fills.get((str(want.digest), want.upstream.name, peer_fed))
            if lease is not None:
                lease.named()

    def held_elsewhere(self, want: Want) -> bool:
        """Whether a fill of ``want``'s digest runs under another (upstream, repository)."""
        pair = (want.upstream.name, want.repo)
        digest = str(want.digest)
        return any(k[0] == digest and v.fill.pair != pair for k, v in self._fills.items())

    def start(self, want: Want, feed: Feed, slot: Slot) -> Fill | None:
        """A new fill of ``want`` fed by ``feed``; None when the blob is complete.

        The caller holds ``slot`` of the gate for ``want.requester`` (the fill gives
        it back when it ends), and checked :meth:`running` without an await since,
        so two requests can never both start one.
        """
        if self.store.exists(want.digest):
            return None
        key = (str(want.digest), want.upstream.name, feed.origin == "peer")
        lease = _Lease(self, want, key, slot)
        self._fills[key] = lease
        # The upstream stays open while its fill reads bodies from it.
        want.upstream.pins += 1
        task = asyncio.create_task(self._run(lease, feed, want.upstream), name=f"fill {key[0]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return lease.fill

    async def _run(self, lease: _Lease, feed: Feed, upstream: Upstream) -> None:
        fill = lease.fill
        try:
            await fill.run(feed, self.stats, self.accounting)
        finally:
            upstream.pins -= 1
            lease.end()
        if fill.error is not None:
            self._events.failed(fill)

    def _forget(self, key: Key, lease: _Lease) -> None:
        if self._fills.get(key) is lease:
            del self._fills[key]

    @property
    def active(self) -> int:
        return len(self._fills)

    def temp_paths(self) -> list[Path]:
        paths = (lease.fill.tmp_path for lease in self._fills.values())
        return [path for path in paths if path is not None]

    async def close(self) -> None:
        """Cancel every fill (shutdown); their temp files are removed. The slots they
        free start nothing: the gate is closed first."""
        self.gate.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _Lease:
    """One running fill as the registry holds it (``fillstate.Lease``): its key, its
    slot at the gate, the disk reserved for what it announced."""

    def __init__(self, fills: Fills, want: Want, key: Key, slot: Slot) -> None:
        self._fills = fills
        self._key = key
        self._slot = slot
        self._reserved: tuple[int, bool] | None = None
        up = want.upstream.name
        self.fill = Fill(
            want.digest, fills.store, up, want.repo, fills.options, fills.ranges, lease=self
        )
        self.fill.background = not want.requester  # the node's own work

    def sized(self, size: int | None) -> bool:
        if not size:
            return True
        # What the fill announced counts against the disk, and (if it is to be kept)
        # against the cache's limit, until it ends.
        kept = self._fills.budget.reserve(size)
        self._reserved = (size, kept)
        return kept

    def readers(self, abandoned: bool) -> None:
        gate = self._fills.gate
        if not abandoned:
            gate.rejoin(self._slot)
            return
        # A fill fed by peers is preemptible too, and the first to go: its blob is
        # still at the node feeding it (that node's fill goes on while others read
        # it), so cancelling it costs no upstream transfer, only the cluster's.
        gate.abandon(self._slot, self._preempt, cheap=self._key[2])

    async def vouched(self) -> None:
        try:
            await self._fills._events.vouched(self.fill)
        except Exception:  # a link not written costs a confirmation later, not the blob
            log.exception("recording %s", self.fill.digest)

    def named(self) -> None:
        self._fills.gate.named(self._slot)

    async def kept(self) -> None:
        try:
            await self._fills._events.committed(self.fill)
        except Exception:  # what follows must not fail the fill (the blob is kept)
            log.exception("after caching %s", self.fill.digest)

    def _preempt(self) -> None:
        # Out of the registry first: nobody joins a fill that is going.
        self._fills._forget(self._key, self)
        self.fill.stop()

    def end(self) -> None:
        """The fill ended: its disk and its slot go back, and it leaves the registry."""
        if self._reserved is not None:
            self._fills.budget.release(*self._reserved)
        self._fills.gate.leave(self._slot)
        self._fills._forget(self._key, self)


class InFlight:
    """Joins a running fill or starts one fed by ``next``; steps aside when the disk
    has no room (``room``), so ``next`` streams the blob through uncached.

    ``hold``: a range's last byte waits for the whole blob's verification (a
    client's chain); a peer's chain sends every byte as it lands (the peer verifies).
    """

    def __init__(
        self,
        fills: Fills,
        next: Remote,
        room: Callable[[], bool],
        join_peer_fed: bool = True,
        hold: bool = True,
    ) -> None:
        self._fills = fills
        self._next = next
        self._room = room
        self._join_peer_fed = join_peer_fed
        self._hold = hold

    async def open(self, want: Want, first: int = 0) -> Body:
        fills = self._fills
        joined = await self._join(want)
        if joined is not None:
            return joined
        slot = await fills.gate.enter(want.requester)
        try:
            # Waiting for a slot may have taken a while: look again.
            joined = await self._join(want)
            if joined is not None:
                fills.gate.leave(slot)
                return joined
            if not self._room():
                # The relay holds an upstream connection like a fill: same slot.
                relayed = await self._next.open(want, first)
                # Counted once the upstream answered with the blob: a refusal moves
                # no counter a held digest's refusal would not.
                fills.stats.count_streamed_through()
                log.warning("no room for a fill: streaming %s through uncached", want.digest)
                return _Gated(relayed, fills.gate, slot)
            fill = fills.start(want, self._next.feed(want), slot)
        except BaseException:
            fills.gate.leave(slot)
            raise
        if fill is None:  # completed since the store was asked
            fills.gate.leave(slot)
            blob = fills.store.open(want.digest)
            if blob is None:
                raise BlobUnknown()
            return FileBody(blob)
        return FillBody(fill, started=True, hold=self._hold)

    async def _join(self, want: Want) -> Body | None:
        """The running fill's body, if one brings ``want`` in. A fill started under
        another (upstream, repository) is joined once it has begun: if that pair's
        upstream refuses it, this request's own pair is asked instead of failing with
        an answer that was never about it."""
        fill = self._fills.running(want, self._join_peer_fed)
        if fill is None:
            return None
        if fill.pair != (want.upstream.name, want.repo):
            try:
                await fill.started()
            except RegistryError:
                return None  # that pair's answer, not this one's: ask under ours
            if fill.preempted:
                return None  # it gave its slot up meanwhile (nobody read it)
        if want.for_client:
            # A client of this node reads it: never held to prefetch_rate. (A peer's
            # request is not one: the node asking has its own limits and its own
            # client, if any, has other places to take pieces from.)
            fill.background = False
        return FillBody(fill, started=False, hold=self._hold)

    async def size(self, want: Want) -> int:
        fill = self._fills.running(want, self._join_peer_fed)
        if fill is not None:
            try:
                await fill.started()
            except RegistryError:
                # Another pair's answer, or a fill that gave its slot up: ask anew.
                if fill.pair != (want.upstream.name, want.repo) or fill.preempted:
                    return await self._next.size(want)
                raise
            if fill.size is not None:
                return fill.size
        return await self._next.size(want)


class _Gated:
    """A body streamed through uncached, holding a fill slot until it is closed."""

    def __init__(self, body: Body, gate: FillGate, slot: Slot) -> None:
        self._body = body
        self._gate = gate
        self._slot = slot

    @property
    def origin(self) -> Origin:
        return self._body.origin

    async def size(self) -> int | None:
        return await self._body.size()

    async def final_size(self) -> int:
        return await self._body.final_size()

    async def send(self, sink: Sink, start: int, end: int | None) -> None:
        await self._body.send(sink, start, end)

    def vouches(self, upstream: str, repo: str) -> bool:
        return self._body.vouches(upstream, repo)

    def close(self) -> None:
        self._body.close()
        self._gate.leave(self._slot)


class Held:
    """The end of a holder's chain: joins any running fill of the digest (one fed by
    peers too) and never starts one. A peer asking for a piece is sent what this
    node holds, as it lands, and nothing else: no fetch ever starts for it.

    ``idle``: seconds a piece's reader waits for its next bytes before it gives up
    (the peer asks someone else), so no upload waits on a fill that stalled.
    """

    def __init__(self, fills: Fills, idle: float) -> None:
        self._fills = fills
        self._idle = idle

    async def open(self, want: Want, first: int = 0) -> Body:
        fill = self._fills.running(want)
        if fill is not None and fill.state is not FillState.FAILED:
            return FillBody(fill, started=False, hold=False, idle=self._idle)
        blob = self._fills.store.open(want.digest)  # completed since the store was asked
        if blob is not None:
            return FileBody(blob)
        raise BlobUnknown("this node does not hold the blob")

    async def size(self, want: Want) -> int:
        fill = self._fills.running(want)
        if fill is not None:
            await fill.started()
            if fill.size is not None:
                return fill.size
        size = self._fills.store.size(want.digest)
        if size is None:
            raise BlobUnknown("this node does not hold the blob")
        return size
