"""What this node's swarms remember together (every fill here asks the same few holders).

The holders that answered "busy" lately are left alone a while by every fill, longer
each time in a row; the holders that sent part of a blob that failed verification
are left out for :data:`SUSPECT_SECONDS`; and the digests that failed so come from
their owner alone for :data:`OWNER_ONLY_SECONDS`. Bounded: at most
:data:`MAX_REMEMBERED` nodes and digests for each rule.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from ..blobs.source import Want

#: Seconds a holder that answered "busy" is not asked,
BUSY_PAUSE = 0.05
#: doubling for each refusal in a row, up to this.
MAX_BUSY_PAUSE = 0.8
#: Seconds the holders of a blob that failed verification are left out.
SUSPECT_SECONDS = 300.0
#: Seconds a digest that failed verification here comes from its owner alone.
OWNER_ONLY_SECONDS = 300.0
#: Nodes and digests remembered for the two rules above, at most.
MAX_REMEMBERED = 1024


class _Expiring:
    """Keys remembered for a while; bounded."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()

    def add(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._until[key] = self._clock() + self._ttl
            self._until.move_to_end(key)
        while len(self._until) > MAX_REMEMBERED:
            self._until.popitem(last=False)

    def current(self) -> frozenset[str]:
        now = self._clock()
        for key in [k for k, t in self._until.items() if t <= now]:
            del self._until[key]
        return frozenset(self._until)


class SwarmMemory:
    """The holders every fill of this node leaves alone for now, and the digests that
    come from their owner alone for a while."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.suspects = _Expiring(SUSPECT_SECONDS, clock)
        self.owner_only = _Expiring(OWNER_ONLY_SECONDS, clock)
        #: Until when each holder that answered "busy" is left alone, and its
        #: refusals in a row.
        self.busy: dict[str, float] = {}
        self._refusals: dict[str, int] = {}

    def refused(self, holder: str) -> None:
        """``holder`` answered busy: leave it alone a while, longer each time in a row."""
        times = self._refusals[holder] = self._refusals.get(holder, 0) + 1
        self.busy[holder] = self.clock() + min(BUSY_PAUSE * 2 ** (times - 1), MAX_BUSY_PAUSE)
        if len(self.busy) > MAX_REMEMBERED:
            now = self.clock()
            for node in [n for n, until in self.busy.items() if until <= now]:
                del self.busy[node]
                self._refusals.pop(node, None)

    def admitted(self, holder: str) -> None:
        """``holder`` sent a piece: it is asked as soon as it is free again."""
        self.busy.pop(holder, None)
        self._refusals.pop(holder, None)

    def failed(self, digest: str, senders: Iterable[str]) -> None:
        """``digest`` failed verification after ``senders`` sent some of it: they sit
        out, and the digest comes from its owner alone for a while."""
        self.suspects.add(senders)
        self.owner_only.add([digest])

    def alone(self, want: Want) -> bool:
        """Whether ``want`` comes from its owner alone here for now (it failed
        verification after a swarm brought it)."""
        return str(want.digest) in self.owner_only.current()
