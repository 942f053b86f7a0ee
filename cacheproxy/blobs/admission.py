"""Whether a miss may start a fill now: bounds that no request can push past.

A fill holds an upstream connection, a temp file and a reservation of disk space
until it ends, and a client that goes away leaves it running. So fills are bounded
in number (globally, and per client: one client cannot take every slot), requests
beyond the bound wait in a bounded queue (beyond that: TOOMANYREQUESTS), disk space
is reserved for what a fill announced it will write, and a digest the upstream just
said it does not have is answered from memory for a while instead of asked again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import TooManyRequests

# A digest the upstream answered 404 for is remembered this long, and this many.
MISS_TTL = 10.0
MAX_MISSES = 10_000


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
    counting what running fills announced they will write."""

    def __init__(self, limit: int | None, min_free: int, free_bytes: Callable[[], int]) -> None:
        self.limit = limit
        self._min_free = min_free
        self._free_bytes = free_bytes
        #: Bytes running fills announced (released when they end).
        self.reserved = 0

    def admits_fill(self) -> bool:
        """Whether a new fill may write to disk (else the miss streams through)."""
        if self._free_bytes() < self._min_free:
            return False
        # Running fills alone could fill the whole cache: nothing more goes to disk.
        return self.limit is None or self.reserved < self.limit

    def room_for_import(self, used: int) -> int:
        """Bytes an import may add to a cache holding ``used`` bytes."""
        room = self._free_bytes() - self._min_free
        if self.limit is not None:
            room = min(room, self.limit - used)
        return max(room, 0)

    def keeps(self, size: int) -> bool:
        """Whether a blob of ``size`` bytes may be kept at all (not past the limit)."""
        return self.limit is None or size <= self.limit


class Misses:
    """Digests the upstream just said a repository does not have."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def add(self, upstream: str, repo: str, digest: str) -> None:
        key = (upstream, repo, digest)
        self._seen[key] = self._clock()
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_MISSES:
            self._seen.popitem(last=False)

    def recent(self, upstream: str, repo: str, digest: str) -> bool:
        seen = self._seen.get((upstream, repo, digest))
        if seen is None:
            return False
        if self._clock() - seen >= MISS_TTL:
            del self._seen[(upstream, repo, digest)]
            return False
        return True
