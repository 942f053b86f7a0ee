"""What a node's swarms share, and how a holder is asked for a piece (swarm.py).

:class:`SwarmNode`: the holders that answered "busy" lately (every fill of this node
leaves them alone a while, longer each time in a row), the holders that sent part of
a blob that failed verification (left out for :data:`SUSPECT_SECONDS`), and the
digests that come from their owner alone for a while after such a failure.
:class:`HolderFeed`: a blob's bytes from one holder's pieces endpoint.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import aiohttp

from ..accounting import Origin
from ..errors import UpstreamUnavailable
from ..peers import pieces
from ..peers.cluster import Cluster
from ..ranges import range_header
from .source import Want

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


class Busy(Exception):
    """A holder is at its upload bound: ask another (429, RFC 6585)."""


class NotHeld(Exception):
    """A holder no longer has the range (404) or cannot serve it (416)."""


class HolderFeed:
    """A blob's bytes from one holder, which serves only what it holds."""

    origin: Origin = "peer"
    lanes = 1

    def __init__(self, cluster: Cluster, node: str, want: Want) -> None:
        self.node = node
        self._cluster = cluster
        self._path = f"/pieces/{want.digest}"
        self._query = {"upstream": want.upstream.name, "repo": want.repo, "node": cluster.self_url}

    async def open(self, start: int, end: int | None = None) -> aiohttp.ClientResponse:
        wanted = range_header(start, end)
        headers = {"Range": wanted} if wanted else {}
        self._cluster.stats.piece_requests += 1
        resp = await self._cluster.get(self.node, self._path, self._query, headers, blob=True)
        if resp.status in (200, 206):
            return resp
        status = resp.status
        resp.release()
        if status == 429:
            raise Busy(self.node)
        if status in (404, 416):
            raise NotHeld(f"{self.node} answered {status}")
        raise UpstreamUnavailable(f"holder {self.node} answered {status}")

    def blame(self) -> None:
        # A piece is not verified on its own: the swarm's rule decides (Swarm.blame).
        return None


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


class SwarmNode:
    """What this node's swarms share: the holders left out after a blob failed
    verification, and the digests that come from their owner alone for a while."""

    def __init__(
        self,
        cluster: Cluster,
        piece_size: int = pieces.PIECE_SIZE,
        max_sources: int = pieces.MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.piece_size = piece_size
        self.max_sources = max_sources
        self.clock = clock
        self.suspects = _Expiring(SUSPECT_SECONDS, clock)
        self.owner_only = _Expiring(OWNER_ONLY_SECONDS, clock)
        #: Until when each holder that answered "busy" is left alone, by every fill
        #: here (one node's fills all ask the same few holders), and its refusals in a row.
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

    def alone(self, want: Want) -> bool:
        """Whether ``want`` comes from its owner alone here for now (it failed
        verification after a swarm brought it)."""
        return str(want.digest) in self.owner_only.current()
