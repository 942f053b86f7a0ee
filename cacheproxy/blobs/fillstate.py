"""What a fill is told (its options), where it stands, what it counts, and what it
holds while it runs (its lease)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from ..accounting import Origin
from ..rates import Rates


class FillState(Enum):
    STARTING = "starting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class FillOptions:
    """What a fill may fetch and how, from the settings."""

    #: Bytes a blob may have at most (0: no limit); a longer body is cut and discarded.
    max_blob_size: int = 0
    #: The smallest byte range asked for on its own connection; the first request
    #: asks for this much, so a blob no bigger comes in one stream.
    segment_min_size: int = 8 * 1024 * 1024
    #: Seconds before a broken body is resumed the first time (doubling after).
    resume_backoff: float = 0.5
    #: The node's bandwidth limits (upstream_rate, prefetch_rate).
    rates: Rates = field(default_factory=Rates)


class Lease(Protocol):
    """What a running fill holds, as the registry of fills grants it (a slot at the
    gate, disk for what it announced), and what the fill tells it."""

    def sized(self, size: int | None) -> bool:
        """The blob's announced size (None: not announced): disk is reserved for it.
        False: it is too big to keep (served to its readers, never kept)."""

    def readers(self, abandoned: bool) -> None:
        """The last reader of the running fill left (True), or a reader came (False)."""

    async def vouched(self) -> None:
        """The blob matched its digest and is about to go into the store: what the node
        records of it (its link) is written first, so nobody finds it held and not
        recorded (a peer asking for a piece at once, a client that got the whole blob,
        a shutdown right after)."""

    async def kept(self) -> None:
        """The blob is in the store, and no reader has its last byte yet."""


class Unleased:
    """The lease of a fill outside any registry (a test's): kept whatever its size."""

    def sized(self, size: int | None) -> bool:
        return True

    def readers(self, abandoned: bool) -> None:
        return None

    async def vouched(self) -> None:
        return None

    async def kept(self) -> None:
        return None


@dataclass
class FillStats:
    """Counters the metrics and the tests read, moved by the methods below alone."""

    upstream_gets: int = 0
    peer_gets: int = 0
    peer_bytes: int = 0
    shared_gets: int = 0
    shared_bytes: int = 0
    upstream_bytes: int = 0
    completed: int = 0
    failed: int = 0
    resumed: int = 0
    digest_mismatches: int = 0
    #: Range requests beyond a blob's first (its other segments).
    segments: int = 0
    #: Fills that fell back to one stream: a feed answered a range wrongly.
    single_stream: int = 0
    # Misses streamed through uncached because the disk was nearly full.
    streamed_through: int = 0

    def count_get(self, origin: Origin) -> None:
        """A feed was asked for a range of a blob (by where it fetches from)."""
        if origin == "peer":
            self.peer_gets += 1
        elif origin == "shared":
            self.shared_gets += 1
        else:
            self.upstream_gets += 1

    def count_bytes(self, origin: Origin, size: int) -> None:
        """``size`` bytes of a blob arrived from a feed (by where it fetches from)."""
        if origin == "peer":
            self.peer_bytes += size
        elif origin == "shared":
            self.shared_bytes += size
        else:
            self.upstream_bytes += size

    def count_segment(self) -> None:
        self.segments += 1

    def count_resumed(self) -> None:
        self.resumed += 1

    def count_single_stream(self) -> None:
        self.single_stream += 1

    def count_completed(self) -> None:
        self.completed += 1

    def count_failed(self) -> None:
        self.failed += 1

    def count_digest_mismatch(self) -> None:
        self.digest_mismatches += 1

    def count_streamed_through(self) -> None:
        self.streamed_through += 1
