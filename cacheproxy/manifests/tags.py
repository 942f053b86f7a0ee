"""A tag to the digest it names now.

A tag is fresh for ``tag_ttl`` seconds; after that one request revalidates it while
the others wait on the same answer, asking the chain of manifest sources past this
node's index (``chains.py``): in a cluster the tag's owner answers, so the upstream
sees one revalidation per cluster per freshness window; otherwise the upstream.
When the upstream fails, a known tag is served stale for up to ``max_stale`` (RFC
5861's stale-if-error).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import ManifestUnknown, TooManyRequests, UpstreamUnavailable
from ..links import Links
from ..singleflight import SingleFlight
from ..store.index import Index, TagEntry, TagKey
from ..upstream.client import Upstream
from .source import Found, ManifestSource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ManifestOptions:
    """The settings manifests and tags are served by."""

    # Seconds a resolved tag is served without asking upstream again.
    tag_ttl: float = 60.0
    # Seconds past its freshness that a tag may still be served when upstream fails.
    max_stale: float = 7 * 24 * 3600.0
    max_manifest_bytes: int = 4 * 1024 * 1024
    # Serve only the cache; never dial out.
    offline: bool = False


# (tag, asks another node) -> (entry, the manifest this call's answer brought, if any).
# The flag is in the key: a call that asks a peer never absorbs a peer's own request,
# which could otherwise end up waiting on itself.
Resolutions = SingleFlight[tuple[TagKey, bool], tuple[TagEntry, Found | None]]


def never(key: str) -> bool:
    """A caller that asks no other node (a peer's request, or no cluster)."""
    return False


class TagResolver:
    """What a tag names, for one kind of caller (clients ask peers; peers do not)."""

    def __init__(
        self,
        index: Index,
        links: Links,
        chain: ManifestSource,
        options: ManifestOptions,
        flights: Resolutions,
        clock: Callable[[], float],
        asks: Callable[[str], bool] = never,
    ) -> None:
        self._index = index
        self._links = links
        self._chain = chain
        self._options = options
        self._flights = flights
        self._clock = clock
        #: Whether resolving a key would ask another node (its owner is not this one).
        self._asks = asks

    async def entry(self, up: Upstream, key: TagKey, body: bool) -> tuple[TagEntry, Found | None]:
        """The tag's entry, and the manifest this call's own answer brought, if any
        (``body``: the caller wants it)."""
        entry = await self._index.get_tag(key)
        if entry is not None and self._clock() - entry.checked_at < self._options.tag_ttl:
            return entry, None
        if self._options.offline:
            return await self._cached(key, entry), None
        flight = (key, self._asks(key.owner_key()))
        (fresh, found), leader = await self._flights.run_leading(
            flight, lambda: self._revalidate(up, key, entry, body)
        )
        return fresh, found if leader else None

    async def _cached(self, key: TagKey, entry: TagEntry | None) -> TagEntry:
        """Offline: the last known resolution, however old, or MANIFEST_UNKNOWN."""
        known = entry or await self._index.get_tag_any(key.upstream, key.name, key.tag)
        if known is None or known.media_type not in key.accept:
            raise ManifestUnknown("not in the cache, and the proxy is offline")
        return known

    async def _revalidate(
        self, up: Upstream, key: TagKey, entry: TagEntry | None, body: bool
    ) -> tuple[TagEntry, Found | None]:
        """Ask the chain what the tag names now; learn it."""
        try:
            named = await self._chain.resolve(up, key, entry, body)
        except (UpstreamUnavailable, TooManyRequests) as exc:
            stale = await self._stale(key, entry)
            if stale is None:
                raise
            log.warning(
                "serving %s/%s:%s from cache: upstream failed (%s)",
                key.upstream,
                key.name,
                key.tag,
                exc.message,
            )
            return stale, None
        fresh = named.entry(self._clock())
        if entry is not None and fresh.digest == entry.digest:
            fresh = replace(entry, checked_at=fresh.checked_at)
        await self._learn(up, key, fresh)
        return fresh, named.found

    async def _stale(self, key: TagKey, entry: TagEntry | None) -> TagEntry | None:
        """The last resolution, if still within ``max_stale`` past its freshness."""
        known = entry or await self._index.get_tag_any(key.upstream, key.name, key.tag)
        window = self._options.tag_ttl + self._options.max_stale
        if (
            known is not None
            and known.media_type in key.accept
            and self._clock() - known.checked_at < window
        ):
            return known
        return None

    async def _learn(self, up: Upstream, key: TagKey, entry: TagEntry) -> None:
        """Keep what the tag names now; the tag's repository may be served it."""
        await self._links.add(up.name, key.name, [entry.digest])
        await self._index.set_tag(key, entry)
