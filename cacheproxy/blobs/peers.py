"""The peer link (cluster mode): the digest's owner, then the next in rank.

The owner answers from its own cache or its own fill (one upstream fetch, streamed
to every waiter, remote peers included). A peer's own request walks the chain
without this link, so requests never loop. With ``peer_holders`` a fill fed here
also takes pieces from the other nodes that hold the blob or are filling it (its
swarm, which this link is handed as :class:`source.Swarms`: ``cacheproxy/swarm/``);
the owner, then the next in rank, then the upstream stay its feed of last resort.
"""

from __future__ import annotations

import logging

import aiohttp

from ..accounting import Origin
from ..errors import UpstreamUnavailable
from ..peers.cluster import Cluster
from ..ranges import range_header
from .relay import RelayBody
from .source import Body, Feed, Remote, Swarm, Swarms, Want

log = logging.getLogger(__name__)


class PeerFeed:
    """Asks the owner, then the next in rank, then ``fallback`` (the rest of the chain).

    Opening again before the last answer was read to its end (a resume) means the
    current peer broke off: it is avoided for a while and the next candidate
    continues from the offset. ``swarm``: the holders of the blob, when a fill may
    take pieces from them too.
    """

    def __init__(
        self,
        cluster: Cluster,
        candidates: list[str],
        fallback: Feed,
        want: Want,
        swarm: Swarm | None = None,
    ) -> None:
        self.swarm = swarm
        self._cluster = cluster
        self._candidates = list(candidates)
        self._fallback = fallback
        # ``node``: who asks, under the signature (the owner bounds each node's fills).
        self._query = {"upstream": want.upstream.name, "repo": want.repo, "node": cluster.self_url}
        self._path = f"/blobs/{want.digest}"
        self._current: str | None = None
        self._last: aiohttp.ClientResponse | None = None
        self._on_fallback = False

    @property
    def origin(self) -> Origin:
        return self._fallback.origin if self._on_fallback else "peer"

    @property
    def lanes(self) -> int:
        # One range at a time from a peer (its owner fetches in segments itself).
        return self._fallback.lanes if self._on_fallback else 1

    async def open(self, start: int, end: int | None = None) -> aiohttp.ClientResponse:
        if self._current is not None:
            last = self._last
            if last is not None and last.content.at_eof():
                # The last range came whole: the next one comes from the same peer.
                self._candidates.insert(0, self._current)
            else:
                self._cluster.membership.mark_bad(self._current, "broke off a blob")
                self._cluster.stats.count_failure()
            self._current = self._last = None
        while self._candidates and not self._on_fallback:
            peer = self._candidates.pop(0)
            wanted = range_header(start, end)
            headers = {"Range": wanted} if wanted else {}
            self._cluster.stats.count_blob_request()
            try:
                resp = await self._cluster.get(peer, self._path, self._query, headers, blob=True)
            except UpstreamUnavailable:
                continue
            if resp.status in (200, 206):
                self._current, self._last = peer, resp
                return resp
            # A 404 relays the upstream's own answer through the owner; anything else
            # (the owner has no such upstream, is overloaded) is the owner's problem:
            # either way this node can still ask the upstream itself.
            log.info("peer %s answered %d for %s", peer, resp.status, self._path)
            resp.release()
            if resp.status >= 500:
                self._cluster.membership.mark_bad(peer, f"answered {resp.status}")
        self._on_fallback = True
        return await self._fallback.open(start, end)

    def blame(self) -> None:
        if self._current is not None:
            self._cluster.stats.count_bad_content()
            self._cluster.membership.mark_bad(self._current, "sent bytes that failed verification")
            self._current = None
        else:
            self._fallback.blame()


class PeerSource:
    """Feeds fills from the digest's owner (falling back to ``next``)."""

    def __init__(self, cluster: Cluster, next: Remote, swarms: Swarms | None = None) -> None:
        self._cluster = cluster
        self._next = next
        self._swarms = swarms

    def feed(self, want: Want) -> Feed:
        fallback = self._next.feed(want)
        candidates = self._cluster.candidates(str(want.digest))
        if not candidates:
            return fallback
        swarm = self._swarms.join(want, candidates[0]) if self._swarms is not None else None
        return PeerFeed(self._cluster, candidates, fallback, want, swarm)

    async def open(self, want: Want, first: int = 0) -> Body:
        return await RelayBody.open(self.feed(want), want.digest, first)

    async def size(self, want: Want) -> int:
        return await self._next.size(want)
