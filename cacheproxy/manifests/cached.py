"""The first link: the manifests this node holds, and the keeper of what the links
after it bring (stored by digest, its media type in the index, and counted)."""

from __future__ import annotations

from ..errors import ManifestUnknown
from ..oci import Digest
from ..store.index import TagEntry, TagKey
from ..upstream.client import Upstream
from .bodies import ManifestBodies
from .source import Found, ManifestSource, Named


class CachedManifests:
    """Serves what this node holds; asks ``next`` for the rest and keeps its answers."""

    def __init__(self, bodies: ManifestBodies, next: ManifestSource) -> None:
        self._bodies = bodies
        self._next = next

    async def by_digest(self, up: Upstream, repo: str, digest: Digest) -> Found:
        body = await self._bodies.cached(digest)
        if body is not None:
            return Found(digest, await self._bodies.media_type(digest, body), body, "cache")
        return await self._keep(up, repo, await self._next.by_digest(up, repo, digest))

    async def resolve(self, up: Upstream, key: TagKey, known: TagEntry | None, body: bool) -> Named:
        # What a tag names is the tag resolver's to cache (tags.py); this link keeps
        # the manifest an answer brought.
        named = await self._next.resolve(up, key, known, body)
        if named.found is not None:
            await self._keep(up, key.name, named.found)
        return named

    async def _keep(self, up: Upstream, repo: str, found: Found) -> Found:
        await self._bodies.keep(
            up.name, repo, found.digest, found.body, found.media_type, found.origin
        )
        return found


class Nowhere:
    """The end of an offline chain: what this node lacks is unknown."""

    def __init__(self, why: str) -> None:
        self._why = why

    async def by_digest(self, up: Upstream, repo: str, digest: Digest) -> Found:
        raise ManifestUnknown(self._why)

    async def resolve(self, up: Upstream, key: TagKey, known: TagEntry | None, body: bool) -> Named:
        raise ManifestUnknown(self._why)
