"""Cluster mode: the other nodes, what this node answers them, and the swarm."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..accounting import NullAccounting
from ..blobs.chains import pieces_chain
from ..blobs.inflight import Fills
from ..blobs.service import BlobService
from ..config import Config
from ..links import Links
from ..peers.cluster import Cluster, start_cluster
from ..sizes import parse_size
from ..swarm.holdings import Holdings
from ..swarm.node import SwarmNode
from .services import Callers, Services
from .storage import Storage


@dataclass(frozen=True)
class ClusterParts:
    """A node's part in its cluster."""

    cluster: Cluster
    #: What this node answers the other nodes' requests with.
    peers: Callers
    #: The chain that answers a peer's request for a piece of a blob this node holds
    #: or is filling, and the holder lists this node keeps as a digest's owner.
    pieces: BlobService
    holdings: Holdings
    #: The swarms a fill fed by peers joins (``peer_holders``), or None: owners only.
    swarms: SwarmNode | None


@asynccontextmanager
async def open_cluster(config: Config) -> AsyncIterator[Cluster | None]:
    """The cluster's membership and peer client when ``config`` is in peer mode."""
    cluster = await start_cluster(config)
    try:
        yield cluster
    finally:
        if cluster is not None:
            await cluster.close()


def swarms_of(config: Config, cluster: Cluster | None) -> SwarmNode | None:
    if cluster is None or not config.peer_holders:
        return None
    return SwarmNode(cluster, piece_size=parse_size(config.peer_piece_size, 0))


def cluster_parts(
    config: Config,
    cluster: Cluster,
    swarms: SwarmNode | None,
    storage: Storage,
    fills: Fills,
    links: Links,
    services: Services,
) -> ClusterParts:
    peers = services.peers()
    pieces = BlobService(
        # A holder waits no longer than its asker: a slot kept for an asker that gave
        # up would turn the others away as busy.
        pieces_chain(storage.store, fills, links, cluster.read_timeout),
        storage.usage,
        NullAccounting(),
    )
    piece_size = parse_size(config.peer_piece_size, 0)
    holdings = Holdings(cluster.self_url, fills, storage.store, peers.blobs, links, piece_size)
    return ClusterParts(cluster, peers, pieces, holdings, swarms)
