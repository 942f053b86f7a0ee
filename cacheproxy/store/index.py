"""Metadata index on diskcache (SQLite): tags and manifest media types.

diskcache is blocking, so every call runs in a worker thread; the event loop never
waits on SQLite. Blob presence is not kept here: the file under ``blobs/`` is the
truth, so the index can be lost without losing a verified byte.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache


@dataclass(frozen=True, slots=True)
class TagEntry:
    """What a tag resolved to, and when upstream last confirmed it."""

    digest: str
    media_type: str
    size: int
    checked_at: float


@dataclass(frozen=True, slots=True)
class TagKey:
    """Tags are keyed by upstream + repository + tag + the Accept class asked with.

    Upstreams answer one tag with different manifests depending on Accept (a
    manifest list for a client that takes lists, one platform's manifest for one
    that does not), so each class of client gets its own resolution.
    """

    upstream: str
    name: str
    tag: str
    accept: tuple[str, ...]

    def key(self) -> str:
        return "tag\0" + "\0".join((self.upstream, self.name, self.tag, ",".join(self.accept)))


class Index:
    """Async facade over one diskcache.Cache."""

    def __init__(self, directory: Path) -> None:
        # sqlite_synchronous=1 (NORMAL) with WAL keeps commits durable across a
        # process crash; the blob files themselves are fsynced separately.
        self._cache = diskcache.Cache(str(directory), size_limit=2**40, eviction_policy="none")

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def get_tag(self, key: TagKey) -> TagEntry | None:
        raw = await self._call(self._cache.get, key.key())
        if not isinstance(raw, tuple) or len(raw) != 4:
            return None
        return TagEntry(*raw)

    async def set_tag(self, key: TagKey, entry: TagEntry) -> None:
        value = (entry.digest, entry.media_type, entry.size, entry.checked_at)
        await self._call(self._cache.set, key.key(), value)

    async def get_manifest_type(self, digest: str) -> str | None:
        raw = await self._call(self._cache.get, "manifest\0" + digest)
        return raw if isinstance(raw, str) else None

    async def set_manifest_type(self, digest: str, media_type: str) -> None:
        await self._call(self._cache.set, "manifest\0" + digest, media_type)

    async def ping(self) -> bool:
        try:
            await self._call(self._cache.get, "ping")
        except Exception:  # any SQLite failure means not ready
            return False
        return True

    def close(self) -> None:
        self._cache.close()
