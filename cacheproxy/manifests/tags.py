"""A tag to the digest it names now.

A tag is fresh for its rule's ttl (``[[freshness]]``, first match wins; else
``tag_ttl``); after that one request revalidates it while the others wait on the
same answer, asking the chain of manifest sources past this node's index
(``chains.py``): in a cluster the tag's owner answers, so the upstream sees one
revalidation per cluster per freshness window; otherwise the upstream. A pinned tag
is resolved once and kept until it is refreshed (:meth:`TagResolver.refresh`,
``cacheproxy refresh``). When the upstream does not confirm a known tag for a reason
its rule names (429, 5xx, offline by default; 404 and 401/403 where the operator
says so), the tag is served stale for up to its ``max_stale`` (RFC 5861's
stale-if-error), and the answer says so (``stale``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..errors import ManifestUnknown, RegistryError
from ..links import Links
from ..singleflight import SingleFlight
from ..store.index import Index, TagEntry, TagKey
from ..upstream.client import Upstream
from .freshness import Freshness, FreshnessRules, reason_of
from .source import Found, ManifestSource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ManifestOptions:
    """The settings manifests and tags are served by."""

    # Seconds a resolved tag is served without asking upstream again (the default
    # of the freshness rules).
    tag_ttl: float = 60.0
    # Seconds past its freshness that a tag may still be served when upstream fails.
    max_stale: float = 7 * 24 * 3600.0
    max_manifest_bytes: int = 4 * 1024 * 1024
    # Serve only the cache; never dial out.
    offline: bool = False


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a tag names for a request: its entry, the manifest this call's own answer
    brought (if any), and why the entry is served stale (None: it is fresh)."""

    entry: TagEntry
    found: Found | None = None
    stale: str | None = None


@dataclass
class TagStats:
    """Tags served stale, by the reason (/metrics)."""

    stale: Counter[str] = field(default_factory=Counter)

    def count_stale(self, reason: str) -> None:
        self.stale[reason] += 1


# (tag, asks another node) -> the resolution this call's answer brought. The flag is
# in the key: a call that asks a peer never absorbs a peer's own request, which
# could otherwise end up waiting on itself.
Resolutions = SingleFlight[tuple[TagKey, bool], Resolution]


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
        rules: FreshnessRules | None = None,
        stats: TagStats | None = None,
    ) -> None:
        self._index = index
        self._links = links
        self._chain = chain
        self._options = options
        self._flights = flights
        self._clock = clock
        #: Whether resolving a key would ask another node (its owner is not this one).
        self._asks = asks
        self._rules = rules or FreshnessRules((), options.tag_ttl, options.max_stale)
        self.stats = stats or TagStats()

    def freshness(self, key: TagKey) -> Freshness:
        return self._rules.of(key.upstream, key.name, key.tag)

    async def entry(self, up: Upstream, key: TagKey, body: bool) -> Resolution:
        """What the tag names (``body``: the caller wants the manifest too)."""
        rule = self.freshness(key)
        entry = await self._index.get_tag(key)
        if entry is not None and (rule.pin or self._clock() - entry.checked_at < rule.ttl):
            return Resolution(entry)
        if self._options.offline:
            return self._counted(await self._cached(key, entry, rule), key)
        return await self._resolve(up, key, entry, body, rule)

    async def refresh(self, up: Upstream, key: TagKey) -> Resolution:
        """Ask what the tag names now, whatever its freshness or pin (an operator's
        ``cacheproxy refresh``); the upstream's refusal is raised, never served stale."""
        if self._options.offline:
            raise ManifestUnknown("the proxy is offline: nothing can be asked")
        entry = await self._index.get_tag(key)
        rule = replace(self.freshness(key), stale_on=frozenset())
        return await self._resolve(up, key, entry, False, rule)

    async def forget(self, upstream: str, name: str, tag: str) -> None:
        """Drop the tag's resolutions for every Accept class."""
        await asyncio.to_thread(self._index.forget_tag, upstream, name, tag)

    async def classes(self, upstream: str, name: str, tag: str) -> list[TagKey]:
        """The tag's keys for every Accept class it is resolved for here."""
        return await self._index.tag_keys(upstream, name, tag)

    async def _resolve(
        self, up: Upstream, key: TagKey, entry: TagEntry | None, body: bool, rule: Freshness
    ) -> Resolution:
        flight = (key, self._asks(key.owner_key()))
        answer, leader = await self._flights.run_leading(
            flight, lambda: self._revalidate(up, key, entry, body, rule)
        )
        found = answer.found if leader else None
        return self._counted(Resolution(answer.entry, found, answer.stale), key)

    def _counted(self, resolution: Resolution, key: TagKey) -> Resolution:
        if resolution.stale is not None:
            self.stats.count_stale(resolution.stale)
        return resolution

    async def _cached(self, key: TagKey, entry: TagEntry | None, rule: Freshness) -> Resolution:
        """Offline: the last known resolution, however old, or MANIFEST_UNKNOWN."""
        known = entry or await self._index.get_tag_any(key.upstream, key.name, key.tag)
        if known is None or known.media_type not in key.accept:
            raise ManifestUnknown("not in the cache, and the proxy is offline")
        fresh = rule.pin or self._clock() - known.checked_at < rule.ttl
        return Resolution(known, None, None if fresh else "offline")

    async def _revalidate(
        self, up: Upstream, key: TagKey, entry: TagEntry | None, body: bool, rule: Freshness
    ) -> Resolution:
        """Ask the chain what the tag names now; learn it (or serve the last stale)."""
        try:
            named = await self._chain.resolve(up, key, entry, body)
        except RegistryError as exc:
            reason = reason_of(exc)
            stale = await self._stale(key, entry, rule) if reason in rule.stale_on else None
            if stale is None:
                raise
            log.warning(
                "serving %s/%s:%s from cache: upstream did not confirm it (%s)",
                key.upstream,
                key.name,
                key.tag,
                exc.message,
            )
            return Resolution(stale, None, reason)
        fresh = named.entry(self._clock())
        if entry is not None and fresh.digest == entry.digest:
            fresh = replace(entry, checked_at=fresh.checked_at)
        await self._learn(up, key, fresh)
        return Resolution(fresh, named.found)

    async def _stale(self, key: TagKey, entry: TagEntry | None, rule: Freshness) -> TagEntry | None:
        """The last resolution, if still within ``max_stale`` past its freshness."""
        known = entry or await self._index.get_tag_any(key.upstream, key.name, key.tag)
        window = rule.ttl + rule.max_stale
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
