"""Metadata index on diskcache (SQLite): tags, manifest media types, access records.

diskcache is blocking, so every call from the server runs in a worker thread; the
event loop never waits on SQLite. Blob presence is not kept here: the file under
``blobs/`` is the truth, so the index can be lost without losing a verified byte.
The methods without ``async`` are blocking, for command-line tools and threads.

Keys (NUL-separated strings):
  tag      upstream, name, tag, accept-class  -> TagEntry tuple
  tagbase  upstream, name, tag                -> TagEntry tuple of the last resolution
  pull     upstream, name, tag                -> (last pulled, pulls)
  manifest digest                             -> media type
  access   digest                             -> (last access, hits)
  link     digest                             -> (("upstream\0repository", linked at), ...)
                                                 that may be served it (cacheproxy/links.py)
  referrers upstream, name, subject, filter   -> (descriptors as JSON, checked at)
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from .private import make_dirs, touch


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

    def owner_key(self) -> str:
        """The key whose rendezvous owner resolves this tag for the cluster."""
        return f"tag:{self.upstream}/{self.name}:{self.tag}"

    def key(self) -> str:
        return "tag\0" + "\0".join((self.upstream, self.name, self.tag, ",".join(self.accept)))


@dataclass(frozen=True, slots=True)
class TagRecord:
    """A tag for inventory and lifecycle: its last resolution and its use."""

    upstream: str
    name: str
    tag: str
    entry: TagEntry
    last_pulled: float
    pulls: int


@dataclass
class Snapshot:
    """Everything the index knows, read at once (inventory, gc, eviction)."""

    tags: list[TagRecord]
    manifest_types: dict[str, str]
    access: dict[str, tuple[float, int]]


MEMORY_RECORDS = 50_000
# Repositories remembered per digest (a base layer is shared by many); past this the
# oldest links go, and the next request under them asks the upstream once more.
MAX_LINKS_PER_DIGEST = 4096


def _remember(memory: OrderedDict[str, Any], key: str, value: Any) -> None:
    memory[key] = value
    memory.move_to_end(key)
    if len(memory) > MEMORY_RECORDS:
        memory.popitem(last=False)


def _links_of(raw: object) -> dict[str, float]:
    """A link record as a mapping; records of an older format read as no links."""
    links: dict[str, float] = {}
    if isinstance(raw, tuple):
        for item in raw:
            if (
                isinstance(item, tuple)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], int | float)
            ):
                links[item[0]] = float(item[1])
    return links


def _tag_base(upstream: str, name: str, tag: str) -> str:
    return "tagbase\0" + "\0".join((upstream, name, tag))


def _pull_key(upstream: str, name: str, tag: str) -> str:
    return "pull\0" + "\0".join((upstream, name, tag))


class Index:
    """Async facade over one diskcache.Cache."""

    def __init__(self, directory: Path) -> None:
        # Private (store.private): diskcache would make the directory 0755 and its
        # database as the umask says; it keeps what exists.
        make_dirs(directory)
        touch(directory / diskcache.core.DBNAME)
        # sqlite_synchronous=1 (NORMAL) with WAL keeps commits durable across a
        # process crash; the blob files themselves are fsynced separately.
        self._cache = diskcache.Cache(str(directory), size_limit=2**40, eviction_policy="none")
        # Write-through memory of the hot records, so a warm manifest request does not
        # wait for a thread and SQLite. Bounded; cleared whenever records are deleted.
        self._tags: OrderedDict[str, TagEntry] = OrderedDict()
        self._types: OrderedDict[str, str] = OrderedDict()
        self._links: OrderedDict[str, Mapping[str, float]] = OrderedDict()

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def get_tag(self, key: TagKey) -> TagEntry | None:
        k = key.key()
        entry = self._tags.get(k)
        if entry is not None:
            self._tags.move_to_end(k)
            return entry
        raw = await self._call(self._cache.get, k)
        if not isinstance(raw, tuple) or len(raw) != 4:
            return None
        entry = TagEntry(*raw)
        _remember(self._tags, k, entry)
        return entry

    async def set_tag(self, key: TagKey, entry: TagEntry) -> None:
        await self._call(self.set_tag_sync, key, entry)

    def set_tag_sync(self, key: TagKey, entry: TagEntry) -> None:
        _remember(self._tags, key.key(), entry)
        value = (entry.digest, entry.media_type, entry.size, entry.checked_at)
        with self._cache.transact():
            self._cache.set(key.key(), value)
            self._cache.set(_tag_base(key.upstream, key.name, key.tag), value)

    async def get_tag_any(self, upstream: str, name: str, tag: str) -> TagEntry | None:
        """The last resolution of a tag for any Accept class (offline fallback)."""
        raw = await self._call(self._cache.get, _tag_base(upstream, name, tag))
        if not isinstance(raw, tuple) or len(raw) != 4:
            return None
        return TagEntry(*raw)

    def record_access(
        self,
        blobs: dict[str, tuple[float, int]],
        tags: dict[tuple[str, str, str], tuple[float, int]],
    ) -> None:
        """Add batched access times and hit counts (blocking, one transaction)."""
        with self._cache.transact():
            for digest, (when, hits) in blobs.items():
                old = self._cache.get("access\0" + digest)
                total = hits + (old[1] if isinstance(old, tuple) else 0)
                self._cache.set("access\0" + digest, (when, total))
            for (upstream, name, tag), (when, pulls) in tags.items():
                key = _pull_key(upstream, name, tag)
                old = self._cache.get(key)
                total = pulls + (old[1] if isinstance(old, tuple) else 0)
                self._cache.set(key, (when, total))

    def snapshot(self) -> Snapshot:
        """Read every record (blocking)."""
        bases: dict[tuple[str, str, str], TagEntry] = {}
        pulls: dict[tuple[str, str, str], tuple[float, int]] = {}
        types: dict[str, str] = {}
        access: dict[str, tuple[float, int]] = {}
        for key in list(self._cache.iterkeys()):
            if not isinstance(key, str):
                continue
            kind, _, rest = key.partition("\0")
            value = self._cache.get(key)
            if value is None:
                continue
            parts = tuple(rest.split("\0"))
            if kind == "tagbase" and len(parts) == 3 and len(value) == 4:
                bases[parts] = TagEntry(*value)
            elif kind == "pull" and len(parts) == 3:
                pulls[parts] = value
            elif kind == "manifest":
                types[rest] = value
            elif kind == "access":
                access[rest] = value
        tags = []
        for (upstream, name, tag), entry in bases.items():
            last, count = pulls.get((upstream, name, tag), (entry.checked_at, 0))
            tags.append(TagRecord(upstream, name, tag, entry, last, count))
        return Snapshot(tags, types, access)

    async def tag_keys(self, upstream: str, name: str, tag: str) -> list[TagKey]:
        """The Accept classes the tag is resolved for here."""
        keys: list[TagKey] = await self._call(self._tag_keys, upstream, name, tag)
        return keys

    def _tag_keys(self, upstream: str, name: str, tag: str) -> list[TagKey]:
        prefix = "tag\0" + "\0".join((upstream, name, tag)) + "\0"
        return [
            TagKey(upstream, name, tag, tuple(raw[len(prefix) :].split(",")))
            for raw in list(self._cache.iterkeys())
            if isinstance(raw, str) and raw.startswith(prefix)
        ]

    def forget_tag(self, upstream: str, name: str, tag: str) -> None:
        """Remove a tag for every Accept class (blocking)."""
        self._tags.clear()
        prefix = "tag\0" + "\0".join((upstream, name, tag)) + "\0"
        with self._cache.transact():
            for key in list(self._cache.iterkeys()):
                if isinstance(key, str) and key.startswith(prefix):
                    self._cache.delete(key)
            self._cache.delete(_tag_base(upstream, name, tag))
            self._cache.delete(_pull_key(upstream, name, tag))

    def forget_content(self, digest: str) -> None:
        """Remove what the index says of a blob or manifest (blocking)."""
        self._types.pop(digest, None)
        self._links.pop(digest, None)
        with self._cache.transact():
            self._cache.delete("manifest\0" + digest)
            self._cache.delete("access\0" + digest)
            self._cache.delete("link\0" + digest)
            # The signature policy's records of it (cacheproxy/policy/records.py).
            self._cache.delete("verdict\0" + digest)
            self._cache.delete("policymark\0" + digest)

    async def links(self, digest: str) -> Mapping[str, float]:
        """The ``upstream\0repository`` pairs ``digest`` may be served under, each with
        the wall-clock time it was linked (read-only: never mutate the mapping)."""
        known = self._links.get(digest)
        if known is not None:
            self._links.move_to_end(digest)
            return known
        found: Mapping[str, float] = await self._call(self.links_sync, digest)
        # Links added while the thread read are newer than what it read.
        newer = self._links.get(digest)
        if newer is not None:
            return newer
        _remember(self._links, digest, found)
        return found

    def links_sync(self, digest: str) -> Mapping[str, float]:
        return _links_of(self._cache.get("link\0" + digest))

    async def add_links(self, pairs: dict[str, dict[str, float]]) -> None:
        """Record that each digest may be served under the given pairs, linked at the
        given times (a pair linked again keeps the newer time)."""
        merged = await self._call(self._write_links, pairs, False)
        # The memory is the loop's: updated here, not in the thread.
        for digest, links in merged.items():
            _remember(self._links, digest, links)

    def add_links_sync(self, pairs: dict[str, dict[str, float]]) -> None:
        """:meth:`add_links` for command-line tools (blocking)."""
        for digest, links in self._write_links(pairs, False).items():
            _remember(self._links, digest, links)

    async def drop_link(self, digest: str, pair: str) -> None:
        """Forget that ``digest`` may be served under ``pair`` (the upstream refused it)."""
        merged = await self._call(self._write_links, {digest: {pair: 0.0}}, True)
        for key, links in merged.items():
            _remember(self._links, key, links)

    def _write_links(
        self, pairs: dict[str, dict[str, float]], drop: bool
    ) -> dict[str, Mapping[str, float]]:
        merged: dict[str, Mapping[str, float]] = {}
        with self._cache.transact():
            for digest, new in pairs.items():
                links = dict(_links_of(self._cache.get("link\0" + digest)))
                for linked, when in new.items():
                    if drop:
                        links.pop(linked, None)
                    elif when >= links.get(linked, -1.0):
                        links[linked] = when
                # Past the bound the oldest links go (their next request asks again).
                kept = sorted(links.items(), key=lambda item: item[1])[-MAX_LINKS_PER_DIGEST:]
                if kept:
                    self._cache.set("link\0" + digest, tuple(kept))
                else:
                    self._cache.delete("link\0" + digest)
                merged[digest] = dict(kept)
        return merged

    def forget_links_except(self, held: set[str]) -> int:
        """Drop the links of digests not in ``held`` (blocking): a digest this node does
        not hold needs no link (its fetch asks the upstream under the pair)."""
        dropped = 0
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and key.startswith("link\0") and key[5:] not in held:
                self._cache.delete(key)
                self._links.pop(key[5:], None)
                dropped += 1
        return dropped

    def forget_all_links(self) -> int:
        """Drop every link record (blocking): a cache written by a version whose links
        cannot be trusted starts over (see ``cacheproxy/links.py``)."""
        self._links.clear()
        dropped = 0
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and key.startswith("link\0"):
                self._cache.delete(key)
                dropped += 1
        return dropped

    async def get_record(self, key: str) -> Any:
        """A raw record (a referrers list, say), read in a thread."""
        return await self._call(self._cache.get, key)

    async def set_record(self, key: str, value: Any) -> None:
        await self._call(self._cache.set, key, value)

    def get_sync(self, key: str) -> Any:
        """A raw record (blocking): for markers such as a layout version."""
        return self._cache.get(key)

    def set_sync(self, key: str, value: Any) -> None:
        self._cache.set(key, value)

    def set_manifest_type_sync(self, digest: str, media_type: str) -> None:
        _remember(self._types, digest, media_type)
        self._cache.set("manifest\0" + digest, media_type)

    async def get_manifest_type(self, digest: str) -> str | None:
        known = self._types.get(digest)
        if known is not None:
            return known
        raw = await self._call(self._cache.get, "manifest\0" + digest)
        if not isinstance(raw, str):
            return None
        _remember(self._types, digest, raw)
        return raw

    async def set_manifest_type(self, digest: str, media_type: str) -> None:
        await self._call(self.set_manifest_type_sync, digest, media_type)

    async def ping(self) -> bool:
        try:
            await self._call(self._cache.get, "ping")
        except Exception:  # any SQLite failure means not ready
            return False
        return True

    def close(self) -> None:
        self._cache.close()
