"""The temp file a fill lands in: pieces written at their offsets, the digest over
the contiguous prefix.

Pieces arrive in any order (one per lane of a segmented fill); each is written
where it belongs with one ``os.pwritev`` and nothing is held in memory. The digest
follows the prefix off the loop, in a thread, reading back what is on disk into
one buffer: writers never wait for it, and bytes that landed ahead of the prefix
are hashed once the prefix reaches them. Blocking work on the file runs in
threads that finish even when their caller is cancelled, and the file is closed
only after the last of them.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from ..oci import Digest
from ..store.files import BlobStore
from .segments import Extents

log = logging.getLogger(__name__)

# Below this a piece is written on the loop (microseconds); above it in a thread.
INLINE_CHUNK = 256 * 1024
# The digest follows the prefix in blocks of this much per thread call, read back
# in pieces of HASH_READ (and starts once this much is waiting).
HASH_BLOCK = 8 * 1024 * 1024
HASH_READ = 1024 * 1024
# Buffers one pwritev takes at most (Linux IOV_MAX is 1024).
IOV_MAX = 512


class Landing:
    """One blob's temp file while its pieces land."""

    def __init__(self, store: BlobStore, digest: Digest) -> None:
        self.store = store
        self.digest = digest
        self.extents = Extents()
        #: Bytes of the prefix the digest has taken in.
        self.hashed = 0
        self.path: Path | None = None
        self._fd = -1
        self._hasher = digest.hasher()
        self._hash_task: asyncio.Task[None] | None = None
        self._hash_error: OSError | None = None
        self._buffer: bytearray | None = None
        # Thread work on the file still running (it must end before the fd closes).
        self._io: set[asyncio.Future[Any]] = set()

    def create(self) -> None:
        """Create the temp file (once the blob is known to exist)."""
        self.path, self._fd = self.store.new_temp(self.digest)

    async def write(self, offset: int, parts: Sequence[bytes | memoryview]) -> None:
        """Put ``parts`` (consecutive bytes) at ``offset``; the digest follows.

        A blob's first bytes are written on the loop whatever their size (the
        first byte's latency; one write per blob), later big writes in a thread.
        """
        size = sum(len(p) for p in parts)
        if size >= INLINE_CHUNK and self.extents.total:
            await self._in_thread(self._pwrite, parts, offset)
        else:
            self._pwrite(parts, offset)
        self.extents.add(offset, offset + size)
        if self.extents.prefix - self.hashed >= HASH_READ and self._hash_task is None:
            self._hash_task = asyncio.create_task(self._hash_prefix(), name=f"hash {self.digest}")

    async def hexdigest(self) -> str:
        """The digest of the prefix, once the hashing has caught up with it."""
        if self._hash_task is not None:
            await asyncio.shield(self._hash_task)
        if self._hash_error is not None:
            raise self._hash_error
        if self.hashed < self.extents.prefix:
            await self._in_thread(self._hash_file, self.hashed, self.extents.prefix)
        return self._hasher.hexdigest()

    async def commit(self) -> None:
        """fsync the verified file and move it into the store (in a thread)."""
        assert self.path is not None
        await self._in_thread(self.store.commit, self.path, self._fd, self.digest)

    def discard(self) -> None:
        if self.path is not None:
            self.store.discard(self.path)

    async def close(self) -> None:
        """Stop hashing; close the file once no thread uses it any more."""
        if self._hash_task is not None:
            self._hash_task.cancel()
        while self._io:
            await asyncio.wait(list(self._io))
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _pwrite(self, parts: Sequence[bytes | memoryview], offset: int) -> None:
        pending = [memoryview(p) for p in parts if len(p)]
        at = offset
        while pending:
            written = os.pwritev(self._fd, pending[:IOV_MAX], at)
            at += written
            while pending and written >= len(pending[0]):
                written -= len(pending[0])
                pending.pop(0)
            if pending and written:
                pending[0] = pending[0][written:]

    async def _hash_prefix(self) -> None:
        try:
            while self.extents.prefix > self.hashed:
                stop = min(self.extents.prefix, self.hashed + HASH_BLOCK)
                await self._in_thread(self._hash_file, self.hashed, stop)
        except OSError as exc:
            # Reported when the digest is asked for.
            self._hash_error = exc
        finally:
            self._hash_task = None

    def _hash_file(self, start: int, stop: int) -> None:
        # Read back from the page cache into one buffer the fill reuses: a copy
        # costs about a tenth of the hashing, and memory stays one buffer per fill.
        if self._buffer is None:
            self._buffer = bytearray(HASH_READ)
        buffer = memoryview(self._buffer)
        # What is hashed is written back to the disk from now on, not all at the
        # fsync of the commit: a big blob's last byte then waits for its last blocks.
        write_back(self._fd, start, stop - start)
        while start < stop:
            got = os.preadv(self._fd, [buffer[: min(HASH_READ, stop - start)]], start)
            if got <= 0:
                raise OSError("blob temp file shorter than what was written")
            self._hasher.update(buffer[:got])
            start += got
            self.hashed = start

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run blocking file work in a thread; it finishes even if the caller is
        cancelled, and :meth:`close` waits for it."""
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(None, functools.partial(func, *args))
        self._io.add(work)
        work.add_done_callback(_settle)
        work.add_done_callback(self._io.discard)
        return await asyncio.shield(work)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2) from the C library, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    func.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], func)


_SYNC_FILE_RANGE = _sync_file_range()
# SYNC_FILE_RANGE_WRITE: start writing the range's dirty pages out, without waiting.
_START_WRITE = 2


def write_back(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` bytes of ``fd`` from ``offset`` back to the disk, and
    return at once (blocking; call it in a thread). Only a hint: where the system
    has no such call, the commit's fsync writes it all."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _START_WRITE)


def _settle(work: asyncio.Future[Any]) -> None:
    # Retrieve a result nobody awaits any more (its caller was cancelled).
    if not work.cancelled():
        work.exception()
