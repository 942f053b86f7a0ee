"""Manifests by digest: recent ones in memory, all of them on disk, verified when kept."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from ..accounting import Accounting, Origin
from ..oci import Digest, manifest_media_type
from ..store.files import BlobStore
from ..store.index import Index

# Manifests are small, immutable and hot: this many bytes of them stay in memory.
MANIFEST_MEMORY = 64 * 1024 * 1024
# Digests whose kept media type was checked against their bytes, remembered at most.
TYPES_CHECKED_MAX = 50_000

log = logging.getLogger(__name__)


class ByteLRU:
    """Least recently used ``bytes`` values, bounded by their total size."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if key in self._items or len(value) > self._capacity // 16:
            return
        self._items[key] = value
        self._size += len(value)
        while self._size > self._capacity:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)


class ManifestBodies:
    """Manifest bytes and media types by digest."""

    def __init__(self, store: BlobStore, index: Index, accounting: Accounting) -> None:
        self._store = store
        self._index = index
        self._accounting = accounting
        self._memory = ByteLRU(MANIFEST_MEMORY)
        # Digests whose kept media type was checked against their bytes.
        self._types_checked: OrderedDict[str, None] = OrderedDict()
        #: Called with (upstream, repo, digest, body, media type) for each manifest kept
        #: from an upstream (the shared tier's write-back); must not block.
        self.on_upstream: list[Callable[[str, str, Digest, bytes, str], object]] = []

    async def cached(self, digest: Digest) -> bytes | None:
        """The manifest's bytes if this node holds them (verified when kept)."""
        key = str(digest)
        body = self._memory.get(key)
        if body is None:
            body = await asyncio.to_thread(self._store.read, digest)
            if body is not None:
                self._memory.put(key, body)
        return body

    async def media_type(self, digest: Digest, body: bytes) -> str:
        """The media type of the manifest ``body`` (verified against ``digest``): the
        one kept with it, checked once per process against the type the bytes
        declare themselves, which wins. A type kept from a source nobody vouched for
        (a peer's unsigned header, a bucket object's metadata, before they stopped
        counting) is corrected so, and kept corrected."""
        key = str(digest)
        kept = await self._index.get_manifest_type(key)
        if kept is not None and key in self._types_checked:
            self._types_checked.move_to_end(key)
            return kept
        media_type = manifest_media_type(body, kept)
        if media_type != kept:
            if kept is not None:
                log.warning("%s was kept as %s; its bytes say %s", key, kept, media_type)
            await self._index.set_manifest_type(key, media_type)
        self._types_checked[key] = None
        if len(self._types_checked) > TYPES_CHECKED_MAX:
            self._types_checked.popitem(last=False)
        return media_type

    async def keep(
        self,
        upstream: str,
        repo: str,
        digest: Digest,
        body: bytes,
        media_type: str,
        origin: Origin,
    ) -> None:
        """Store a manifest whose bytes were checked against ``digest``."""
        if origin == "upstream":
            self._accounting.fetched(upstream, repo, "manifest", len(body))
        await asyncio.to_thread(self._store.put, digest, body)
        await self._index.set_manifest_type(str(digest), media_type)
        self._memory.put(str(digest), body)
        if origin == "upstream":
            for hook in self.on_upstream:
                hook(upstream, repo, digest, body, media_type)
