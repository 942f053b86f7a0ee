"""The first link: complete, verified blobs on this node's disk."""

from __future__ import annotations

import os

from ..accounting import Origin
from ..errors import BlobUnknown
from ..store.files import BlobStore, OpenBlob
from .source import BlobSource, Body, Sink, Want


class FileBody:
    """A complete blob file, sent with the kernel's sendfile where it can be."""

    origin: Origin = "cache"

    def __init__(self, blob: OpenBlob) -> None:
        self._fd = blob.fd
        self._size = blob.size

    async def size(self) -> int:
        return self._size

    async def final_size(self) -> int:
        return self._size

    async def send(self, sink: Sink, start: int, end: int | None) -> None:
        last = self._size - 1 if end is None else end
        await sink.sendfile(self._fd, start, last - start + 1)

    def vouches(self, upstream: str, repo: str) -> bool:
        return False  # a file on disk: whoever fetched it, not necessarily this pair

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalStore:
    """Serves what the store holds; asks ``next`` for everything else."""

    def __init__(self, store: BlobStore, next: BlobSource) -> None:
        self._store = store
        self._next = next

    async def open(self, want: Want, first: int = 0) -> Body:
        blob = self._store.open(want.digest)
        if blob is not None:
            return FileBody(blob)
        return await self._next.open(want, first)

    async def size(self, want: Want) -> int:
        size = self._store.size(want.digest)
        if size is not None:
            return size
        return await self._next.size(want)


class Nowhere:
    """The end of an offline chain: what the store lacks is unknown."""

    def __init__(self, why: str) -> None:
        self._why = why

    async def open(self, want: Want, first: int = 0) -> Body:
        raise BlobUnknown(self._why)

    async def size(self, want: Want) -> int:
        raise BlobUnknown(self._why)
