"""A tag to the digest it names now.

A tag is fresh for ``tag_ttl`` seconds; after that one request revalidates it while
the others wait on the same answer. In a cluster the tag's owner answers, so the
upstream sees one revalidation per cluster per freshness window. Otherwise the
upstream: HEAD when a digest is known (Docker Hub does not count a HEAD as a pull),
GET when nothing is known and the body is needed. When the upstream fails, a known
tag is served stale for up to ``max_stale`` (RFC 5861's stale-if-error).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import aiohttp

from ..accounting import Origin
from ..errors import (
    DigestInvalid,
    ManifestUnknown,
    TooManyRequests,
    UpstreamBadContent,
    UpstreamUnavailable,
)
from ..links import Links
from ..oci import digest_of, manifest_media_type, parse_digest
from ..singleflight import SingleFlight
from ..store.index import Index, TagEntry, TagKey
from ..upstream.client import Upstream, error_for_status, pull_scope, read_bounded
from .bodies import ManifestBodies
from .peers import PeerManifests

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


# (tag, asks peers) -> (entry, origin of the body this call brought, if any). The flag
# is in the key: a call that asks peers never absorbs a peer's own request, which
# could otherwise end up waiting on itself.
Resolutions = SingleFlight[tuple[TagKey, bool], tuple[TagEntry, Origin | None]]


class TagResolver:
    """What a tag names, for one kind of caller (clients ask peers; peers do not)."""

    def __init__(
        self,
        index: Index,
        bodies: ManifestBodies,
        links: Links,
        options: ManifestOptions,
        flights: Resolutions,
        peers: PeerManifests | None,
        clock: Callable[[], float],
        head_first: bool = False,
    ) -> None:
        #: Ask a new tag with HEAD even when its body is wanted: the body may then come
        #: by digest from the shared tier, and a HEAD is not a pull (Docker Hub).
        self._head_first = head_first
        self._index = index
        self._bodies = bodies
        self._links = links
        self._options = options
        self._flights = flights
        self._peers = peers
        self._clock = clock

    async def entry(
        self, up: Upstream, key: TagKey, want_body: bool
    ) -> tuple[TagEntry, Origin | None]:
        """The tag's entry, and where this call's own transfer got its body, if any."""
        entry = await self._index.get_tag(key)
        if entry is not None and self._clock() - entry.checked_at < self._options.tag_ttl:
            return entry, None
        if self._options.offline:
            return await self._cached(key, entry), None
        peers = self._peers.candidates(key.owner_key()) if self._peers is not None else []
        (fresh, origin), leader = await self._flights.run_leading(
            (key, bool(peers)), lambda: self._revalidate(up, key, entry, want_body, peers)
        )
        return fresh, origin if leader else None

    async def _cached(self, key: TagKey, entry: TagEntry | None) -> TagEntry:
        """Offline: the last known resolution, however old, or MANIFEST_UNKNOWN."""
        known = entry or await self._index.get_tag_any(key.upstream, key.name, key.tag)
        if known is None or known.media_type not in key.accept:
            raise ManifestUnknown("not in the cache, and the proxy is offline")
        return known

    async def _revalidate(
        self,
        up: Upstream,
        key: TagKey,
        entry: TagEntry | None,
        want_body: bool,
        peers: list[str],
    ) -> tuple[TagEntry, Origin | None]:
        """Ask what the tag names now; say where the body came from (None: no body
        was transferred)."""
        for peer in peers:
            assert self._peers is not None
            found = await self._peers.ask(peer, up.name, key.name, key.tag, key.accept)
            if found is not None:
                digest, body, media_type = found
                await self._bodies.keep(up.name, key.name, digest, body, media_type, "peer")
                learned = TagEntry(str(digest), media_type, len(body), self._clock())
                await self._learn(up, key, learned)
                return learned, "peer"
        try:
            if entry is not None or not want_body or self._head_first:
                fresh = await self._head(up, key)
                if fresh is not None:
                    if entry is not None and fresh.digest == entry.digest:
                        fresh = replace(entry, checked_at=fresh.checked_at)
                    await self._learn(up, key, fresh)
                    return fresh, None
            fresh = await self._get(up, key)
        except (UpstreamUnavailable, TooManyRequests) as exc:
            known = entry or await self._index.get_tag_any(key.upstream, key.name, key.tag)
            window = self._options.tag_ttl + self._options.max_stale
            if (
                known is not None
                and known.media_type in key.accept
                and self._clock() - known.checked_at < window
            ):
                log.warning(
                    "serving %s/%s:%s from cache: upstream failed (%s)",
                    key.upstream,
                    key.name,
                    key.tag,
                    exc.message,
                )
                return known, None
            raise
        await self._learn(up, key, fresh)
        return fresh, "upstream"

    async def _learn(self, up: Upstream, key: TagKey, entry: TagEntry) -> None:
        """Keep what the tag names now; the tag's repository may be served it."""
        await self._links.add(up.name, key.name, [entry.digest])
        await self._index.set_tag(key, entry)

    async def _ask(self, up: Upstream, key: TagKey, method: str) -> aiohttp.ClientResponse:
        """The upstream's 200 answer for the tag, asked with the key's Accept class."""
        resp = await up.request(
            method,
            f"/v2/{key.name}/manifests/{key.tag}",
            scope=pull_scope(key.name),
            headers={"Accept": ", ".join(key.accept)},
        )
        if resp.status != 200:
            err = error_for_status(resp, ManifestUnknown)
            resp.release()
            raise err
        return resp

    async def _head(self, up: Upstream, key: TagKey) -> TagEntry | None:
        """HEAD the tag upstream; None when the answer lacks what a TagEntry needs."""
        async with await self._ask(up, key, "HEAD") as resp:
            digest = resp.headers.get("Docker-Content-Digest", "")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            size = resp.content_length
        try:
            parse_digest(digest)
        except DigestInvalid:
            return None
        if media_type not in key.accept or size is None:
            return None
        return TagEntry(digest, media_type, size, self._clock())

    async def _get(self, up: Upstream, key: TagKey) -> TagEntry:
        async with await self._ask(up, key, "GET") as resp:
            body = await read_bounded(resp, self._options.max_manifest_bytes)
            header_digest = resp.headers.get("Docker-Content-Digest")
            header_type = resp.headers.get("Content-Type")
        digest = digest_of(body)
        if header_digest:
            try:
                claimed = parse_digest(header_digest)
            except DigestInvalid as exc:
                raise UpstreamBadContent("upstream sent a malformed manifest digest") from exc
            digest = digest_of(body, claimed.algorithm)
            if digest != claimed:
                raise UpstreamBadContent("upstream manifest does not match its digest")
        media_type = manifest_media_type(body, header_type)
        if media_type not in key.accept:
            raise ManifestUnknown(
                f"upstream holds a {media_type} for this tag, which the Accept does not admit"
            )
        await self._bodies.keep(up.name, key.name, digest, body, media_type, "upstream")
        return TagEntry(str(digest), media_type, len(body), self._clock())
