"""This node's swarms (cluster mode with ``peer_holders``): a fill fed by peers joins
its blob's swarm here, and every swarm of the node shares one memory of holders."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..blobs.source import Want
from ..peers.cluster import Cluster
from . import policy
from .asker import Asker
from .memory import SwarmMemory


class SwarmNode:
    """The swarms of this node: what the peer link asks for a fill fed by peers
    (``blobs.source.Swarms``)."""

    def __init__(
        self,
        cluster: Cluster,
        piece_size: int = policy.PIECE_SIZE,
        max_sources: int = policy.MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.piece_size = piece_size
        self.max_sources = max_sources
        self.memory = SwarmMemory(clock)

    def join(self, want: Want, owner: str) -> Asker | None:
        """The swarm a fill of ``want`` joins (``owner``: the digest's owner); None
        when the blob comes from its owner alone for now (see ``memory.py``)."""
        if self.memory.alone(want):
            return None
        return Asker(
            self.cluster,
            self.memory,
            want,
            owner,
            piece_size=self.piece_size,
            max_sources=self.max_sources,
        )
