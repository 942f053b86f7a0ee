"""What the lanes of a fill write into: the fill as its lanes (``lanes.py``) see it,
and one request in flight."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..accounting import Origin
from ..oci import Digest
from ..rates import Rate
from .segments import Extents, Span


class Target(Protocol):
    """Where lanes put their bytes, and all they tell of them: the fill."""

    @property
    def digest(self) -> Digest:
        """The blob's digest (what the lanes' log lines name)."""

    @property
    def size(self) -> int | None:
        """The blob's size once a feed announced it."""

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

    def paced_by(self, origin: Origin) -> list[Rate]:
        """The bandwidth limits bytes from a feed of ``origin`` are taken under."""


@dataclass
class Lane:
    """One request in flight: bytes ``pos`` up to ``end`` (exclusive; None: to the
    end of a blob of unknown length) from feed number ``feed``; ``answered`` once
    its answer came (its bytes are then on their way)."""

    feed: int
    pos: int
    end: int | None
    answered: bool = False

    def span(self, size: int | None) -> Span:
        """The bytes it still brings (to the end of the blob when ``end`` is None)."""
        return Span(self.pos, self.end if self.end is not None else (size or self.pos))
