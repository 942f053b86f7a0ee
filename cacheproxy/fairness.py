"""Fair shares, not first come: waiters in a line per client, served in turn.

A bounded resource handed out first come (a fill slot, a password check) is taken
by whoever asks most often: one client that opens many connections makes every
other client wait behind all of them. Here each client has a line of its own; the
next turn goes to the client that ranks lowest (say, the one holding the fewest
slots), among equals to the one served longest ago (round robin), and within one
client's line, first come. Pure bookkeeping: no I/O, no clock, no event loop.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

# An IPv6 client is one /64: a host is handed a whole /64 (RFC 6177, RFC 7934), so
# counting its addresses one by one would give it 2**64 shares.
IPV6_CLIENT_PREFIX = 64


def client_address(remote: str | None) -> str:
    """The address a share is counted under: the IPv4 address itself (an IPv4-mapped
    IPv6 one too), an IPv6 address's /64; whatever else as it came (a Unix socket)."""
    if not remote:
        return ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False)
        return str(network)
    return str(address)


class FairQueue(Generic[T]):
    """Items (waiters) in one line per client; :meth:`next` says whose turn it is.

    ``dead``: an item that no longer waits (a cancelled future); such items are
    dropped when they reach the head of their line, and never get a turn.
    """

    def __init__(self, dead: Callable[[T], bool] = lambda _: False) -> None:
        self._dead = dead
        # client -> its items, oldest first. The dict's order is the turn order: a
        # client just served goes to the back, a client new to the queue too.
        self._lines: dict[str, deque[T]] = {}
        self._count = 0

    def __len__(self) -> int:
        """Items queued (dead ones not dropped yet included)."""
        return self._count

    def waiting(self, client: str) -> int:
        """Items ``client`` has queued."""
        line = self._lines.get(client)
        return len(line) if line is not None else 0

    def clients(self) -> Iterator[str]:
        """The clients with items queued, in turn order."""
        return iter(self._lines)

    def push(self, client: str, item: T) -> None:
        """Queue ``item`` at the end of ``client``'s line."""
        self._lines.setdefault(client, deque()).append(item)
        self._count += 1

    def remove(self, client: str, item: T) -> bool:
        """Take ``item`` out of ``client``'s line (it gave up); False if not there."""
        line = self._lines.get(client)
        if line is None:
            return False
        try:
            line.remove(item)
        except ValueError:
            return False
        self._count -= 1
        if not line:
            del self._lines[client]
        return True

    def next(self, rank: Callable[[str], int] | None = None) -> str | None:
        """Whose turn it is: the lowest ``rank`` (none: all equal), among equals the
        client first in turn order; None when nothing live is queued."""
        best: str | None = None
        best_rank = 0
        for client in list(self._lines):
            line = self._lines[client]
            while line and self._dead(line[0]):
                line.popleft()
                self._count -= 1
            if not line:
                del self._lines[client]
                continue
            value = rank(client) if rank is not None else 0
            if best is None or value < best_rank:
                best, best_rank = client, value
        return best

    def take_newest(self, client: str) -> T | None:
        """The live item ``client`` queued last, taken out (None: it has none)."""
        line = self._lines.get(client)
        item = None
        while line:
            candidate = line.pop()
            self._count -= 1
            if not self._dead(candidate):
                item = candidate
                break
        if line is not None and not line:
            del self._lines[client]
        return item

    def take(self, client: str) -> T:
        """The head of ``client``'s line (call :meth:`next` first); the client goes
        to the back of the turn order."""
        line = self._lines.pop(client)
        item = line.popleft()
        self._count -= 1
        if line:
            self._lines[client] = line
        return item
