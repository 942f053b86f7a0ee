"""Disk space for fills: ``min_free`` kept on the disk, and the cache's limit counting
what running fills announced they will write."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..sizes import DiskSpace, largest_size


class DiskBudget:
    """Disk space for fills: ``min_free`` on the disk, and the cache's ``limit``
    counting what running fills announced they will write.

    ``min_free`` is the largest of its terms, each bytes ("10GiB") or a share of the
    file system ("20%"), resolved against the file system's size at each check (a
    volume grown online moves it). The default keeps the disk clear of the kubelet's
    default hard eviction thresholds (``nodefs.available<10%``,
    ``imagefs.available<15%``): a proxy that filled a node's disk to 1 GiB would get
    the node's pods evicted.
    """

    def __init__(
        self, limit: int | None, min_free: Sequence[str], disk: Callable[[], DiskSpace]
    ) -> None:
        self.limit = limit
        self._min_free = tuple(min_free)
        self._disk = disk
        #: Bytes running fills that will be kept announced: they count against the limit.
        self.reserved = 0
        #: Bytes every running fill announced (kept or not): they will take disk space.
        self.outstanding = 0

    def min_free(self, total: int) -> int:
        """The bytes to keep free on a file system of ``total`` bytes."""
        return largest_size(self._min_free, total)

    def space(self) -> DiskSpace:
        """The file system's free and total bytes now (one ``statvfs``)."""
        return self._disk()

    def shortfall(self, space: DiskSpace) -> int:
        """Bytes a disk of ``space`` is short of ``min_free`` (0 when it is not),
        counting what running fills will still write (whole: a little early, never
        late): what the keeper frees by eviction."""
        return max(self.min_free(space.total) - (space.free - self.outstanding), 0)

    def admits_fill(self) -> bool:
        """Whether a new fill may write to disk (else the miss streams through)."""
        # What running fills will still write is as good as gone (counted whole: a
        # little early, never late).
        if self.shortfall(self._disk()) > 0:
            return False
        # Running fills alone could fill the whole cache: nothing more goes to disk.
        return self.limit is None or self.reserved < self.limit

    def room_for_import(self, used: int) -> int:
        """Bytes an import may add to a cache holding ``used`` bytes."""
        free, total = self._disk()
        room = free - self.min_free(total)
        if self.limit is not None:
            room = min(room, self.limit - used)
        return max(room, 0)

    def keeps(self, size: int) -> bool:
        """Whether a blob of ``size`` bytes may be kept at all (not past the limit)."""
        return self.limit is None or size <= self.limit

    def reserve(self, size: int) -> bool:
        """A running fill announced ``size`` bytes: they count against the disk until
        it ends, and against the limit if the blob may be kept (False: it may not)."""
        self.outstanding += size
        kept = self.keeps(size)
        if kept:
            self.reserved += size
        return kept

    def release(self, size: int, kept: bool) -> None:
        """The fill that reserved ``size`` bytes (``kept``: as :meth:`reserve` said) ended."""
        self.outstanding -= size
        if kept:
            self.reserved -= size
