"""Bandwidth limits: one token bucket per kind of transfer, shared by every transfer
of that kind on the node (``upstream_rate``, ``peer_upload_rate``, ``prefetch_rate``).

A transfer takes its bytes a quantum at a time (:meth:`Rate.quantum`), asking the
bucket before it reads or sends them. The bucket is a virtual clock (the generic
cell rate algorithm of ATM and RFC 2698's meters): each ask reserves its bytes'
share of a second after those of every ask before it, and waits until the bucket
has room; so the transfers of a kind are served in the order they asked, a quantum
each, and none can take the whole rate while another waits. The burst is a tenth of
a second's bytes: short enough that a kernel counter averaged over a second sees
the rate, long enough that a sleep's jitter is not lost throughput.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .sizes import parse_size

#: The kinds of transfer a limit can be set for, as /metrics labels them.
KINDS = ("upstream", "peer_upload", "prefetch")
#: Seconds of bytes a bucket lets through at once.
BURST = 0.1
#: The bytes a transfer asks for at once: a twentieth of a second of the rate, within
#: these bounds (small enough to interleave the transfers of a kind, large enough that
#: each ask's Python call is cheap against its bytes).
MIN_QUANTUM = 16 * 1024
MAX_QUANTUM = 1024 * 1024
#: The smallest receive buffer a limited body's socket is given.
MIN_WINDOW = 64 * 1024


@dataclass
class Rate:
    """A limit of ``per_second`` bytes a second for one kind of transfer."""

    kind: str
    per_second: float
    clock: Callable[[], float] = time.monotonic
    #: Bytes that went through the bucket, and the seconds asks waited in all.
    bytes: int = 0
    waited: float = 0.0
    #: When the bucket is empty again, on ``clock`` (the virtual clock).
    _empty_at: float = field(default=0.0, repr=False)

    def quantum(self) -> int:
        return int(min(MAX_QUANTUM, max(MIN_QUANTUM, self.per_second / 20)))

    async def take(self, count: int) -> None:
        """Wait until ``count`` bytes may go. A cancelled ask gives its bytes back (the
        asks after it then wait a little longer than needed, never less)."""
        if count <= 0:
            return
        now = self.clock()
        cost = count / self.per_second
        start = max(self._empty_at, now)
        self._empty_at = start + cost
        delay = self._empty_at - BURST - now
        self.bytes += count
        if delay <= 0:
            return
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self._empty_at -= cost
            self.bytes -= count
            raise
        self.waited += delay

    def give_back(self, count: int) -> None:
        """Bytes taken and not used (a read that brought less than it paid for)."""
        self._empty_at -= count / self.per_second
        self.bytes -= count


@dataclass(frozen=True)
class Rates:
    """The node's limits: a :class:`Rate` for each kind that has one."""

    upstream: Rate | None = None
    peer_upload: Rate | None = None
    prefetch: Rate | None = None

    def all(self) -> list[Rate]:
        return [r for r in (self.upstream, self.peer_upload, self.prefetch) if r is not None]


def parse_rate(text: str) -> float:
    """``"50MiB"`` (a size, per second) or plain bytes a second; ``"0"``: no limit.
    Raises ValueError for anything else."""
    value = parse_size(text, 0)
    if text.strip().endswith("%"):
        raise ValueError(f"a rate is bytes a second, not {text!r}")
    return float(value)


def rates_of(upstream: str, peer_upload: str, prefetch: str) -> Rates:
    """The limits the settings name (each ``"0"``: none)."""

    def one(kind: str, text: str) -> Rate | None:
        per_second = parse_rate(text)
        return Rate(kind, per_second) if per_second > 0 else None

    return Rates(
        one("upstream", upstream), one("peer_upload", peer_upload), one("prefetch", prefetch)
    )


def window_for(rates: list[Rate], lanes: int) -> int | None:
    """The receive buffer of each of ``lanes`` bodies read at once under ``rates``
    (None: not limited): what the kernel takes in ahead of the readers, in all, is a
    burst's worth (Linux doubles the value set: socket(7)); one lane alone keeps a
    window of the limit's rate over a round trip of up to 200 ms."""
    if not rates:
        return None
    slowest = min(r.per_second for r in rates)
    return max(MIN_WINDOW, int(slowest * BURST / max(1, lanes)))


async def paced(rates: list[Rate], count: int) -> None:
    """Wait until ``count`` bytes may go under every one of ``rates``."""
    for rate in rates:
        await rate.take(count)


class Pacer:
    """The reads of one body under the limits ``limits()`` names at each read (they
    change: a client joining a prefetch lifts its limit): each read's bytes paid for
    before it is made, so what a body takes in ahead of its limit is one read and the
    socket's window, not every lane's last read; the difference settled after."""

    def __init__(self, limits: Callable[[], list[Rate]], unlimited: int) -> None:
        self._limits = limits
        self._unlimited = unlimited
        self._rates: list[Rate] = []
        self._paid = 0

    async def ahead(self) -> int:
        """Wait for the next read's allowance; the bytes it may bring."""
        self._rates = rates = self._limits()
        if not rates:
            return self._unlimited
        step = min(r.quantum() for r in rates)
        await paced(rates, step)
        self._paid = step
        return step

    async def settle(self, used: int) -> None:
        """The read brought ``used`` bytes (a read may overshoot by what arrived)."""
        if not self._rates:
            return
        if used > self._paid:
            await paced(self._rates, used - self._paid)
        else:
            for rate in self._rates:
                rate.give_back(self._paid - used)
        self._paid = 0
