"""What the lanes of a fill write into and count with: the fill as its lanes
(``lanes.py``) see it, and one request in flight."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..oci import Digest
from .segments import Extents


class Target(Protocol):
    """Where lanes put their bytes: the fill."""

    digest: Digest
    size: int | None
    received: int
    received_shared: int

    @property
    def extents(self) -> Extents:
        """The spans of the blob on disk."""

    def begin(self, size: int | None) -> None:
        """A feed answered with the blob (its size, if known)."""

    async def write_at(self, offset: int, parts: Sequence[bytes | memoryview]) -> None:
        """Put ``parts`` (consecutive bytes) at ``offset`` of the blob; CacheWriteFailed
        when this node's disk cannot take them."""

    def hints(self) -> list[int]:
        """Positions readers wait at that nothing has landed at yet."""


class Counters(Protocol):
    upstream_gets: int
    peer_gets: int
    peer_bytes: int
    upstream_bytes: int
    shared_gets: int
    shared_bytes: int
    resumed: int
    segments: int
    single_stream: int


@dataclass
class Lane:
    """One request in flight: bytes ``pos`` up to ``end`` (exclusive; None: to the
    end of a blob of unknown length) from feed number ``feed``; ``answered`` once
    its answer came (its bytes are then on their way)."""

    feed: int
    pos: int
    end: int | None
    answered: bool = False
