"""Each address's share of a listener's connections: who holds what, and whose
place a newcomer may take when every place is taken.

A node-local mirror's one client is the runtime on loopback, one address with
hundreds of connections, so nothing here caps an address while there is room. At
the bound, a newcomer from an address holding less than its fair share (the
places over the addresses holding some, its own counted) may take a place of the
address holding the most, if that one holds more than the newcomer's would, plus
one; so shares even out and never swap back and forth. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Shares(Generic[T]):
    """What each address holds (connections, handshakes), oldest first."""

    def __init__(self) -> None:
        # address -> its items in the order they came (dicts keep it).
        self._by: dict[str, dict[T, None]] = {}
        #: Items held, by every address.
        self.total = 0

    def __len__(self) -> int:
        """Addresses holding something."""
        return len(self._by)

    def count(self, address: str) -> int:
        """Items ``address`` holds."""
        held = self._by.get(address)
        return len(held) if held is not None else 0

    def add(self, address: str, item: T) -> None:
        held = self._by.setdefault(address, {})
        if item not in held:
            held[item] = None
            self.total += 1

    def remove(self, address: str, item: T) -> bool:
        """Take ``item`` out; False if ``address`` did not hold it."""
        held = self._by.get(address)
        if held is None or item not in held:
            return False
        del held[item]
        self.total -= 1
        if not held:
            del self._by[address]
        return True

    def items(self, address: str) -> Iterator[T]:
        """What ``address`` holds, oldest first (hold nothing new while iterating)."""
        return iter(self._by.get(address, {}))

    def all(self) -> list[T]:
        """Everything held, by any address."""
        return [item for held in self._by.values() for item in held]

    def newest(self, address: str) -> T | None:
        held = self._by.get(address)
        return next(reversed(held)) if held else None

    def rival(self, address: str, places: int) -> str | None:
        """The address a newcomer from ``address`` may take a place of, all ``places``
        being taken: None when ``address`` holds its fair share already, else the
        address holding the most, if more than ``address`` would, plus one."""
        mine = self.count(address)
        addresses = len(self._by) + (0 if mine else 1)
        if mine >= places // addresses:
            return None
        rival, most = None, mine + 1
        for other, held in self._by.items():
            if other != address and len(held) > most:
                rival, most = other, len(held)
        return rival
