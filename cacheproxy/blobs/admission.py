"""Whether a miss may start a fill now: bounds that no request can push past.

A fill holds an upstream connection, a temp file and a reservation of disk space
until it ends, and a client that goes away leaves it running. So fills are bounded
in number (globally, and per client: one client cannot take every slot), requests
beyond the bound wait in a bounded queue (beyond that: TOOMANYREQUESTS), disk space
is reserved for what a fill announced it will write. (A digest the upstream just
refused under a repository is answered from memory for a while: ``links.py``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import TooManyRequests
from ..sizes import DiskSpace, largest_size


@dataclass(frozen=True)
class FillLimits:
    """How many fills may run, wait, and run for one client."""

    running: int = 128
    queued: int = 512
    per_client: int = 32


class FillGate:
    """Slots for running fills: a bounded queue, and a bound per client."""

    def __init__(self, limits: FillLimits) -> None:
        self._limits = limits
        self._slots = asyncio.Semaphore(limits.running)
        self._waiting = 0
        self._by_client: dict[str, int] = {}

    async def enter(self, client: str) -> None:
        """Take a slot for a fill ``client`` starts (""): a peer node, not counted per
        client); raises TOOMANYREQUESTS when the client or the queue is at its bound."""
        if client and self._by_client.get(client, 0) >= self._limits.per_client:
            raise TooManyRequests(
                "too many downloads for this client at once", headers={"Retry-After": "1"}
            )
        if self._slots.locked():
            if self._waiting >= self._limits.queued:
                raise TooManyRequests("too many downloads at once", headers={"Retry-After": "1"})
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        if client:
            self._by_client[client] = self._by_client.get(client, 0) + 1

    def leave(self, client: str) -> None:
        self._slots.release()
        if client:
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]

    @property
    def waiting(self) -> int:
        return self._waiting


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
