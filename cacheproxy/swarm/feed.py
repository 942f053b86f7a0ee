"""A blob's bytes from one holder's pieces endpoint, as a feed of a fill's lanes.

A holder serves only what it has or is receiving (``holdings.py``): "busy" (429,
RFC 6585) when it sends as many ranges as it may, "not held" (404, 416) when the
range's first byte is neither on its disk nor on its way.
"""

from __future__ import annotations

import aiohttp

from ..accounting import Origin
from ..blobs.source import Want
from ..errors import UpstreamUnavailable
from ..peers.cluster import Cluster
from ..ranges import range_header


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
        self._cluster.stats.count_piece_request()
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
        # A piece is not verified on its own: the swarm's rule decides (Asker.blame).
        return None
