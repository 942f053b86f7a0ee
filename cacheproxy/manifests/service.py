"""A manifest by tag or digest, as the client's Accept admits, and what it counts as.

The service answers requests: the links rule (a manifest is served under a
repository only by it), one fetch of a manifest at a time, and the bookkeeping of
every answer (last use, the ledger). What a tag names comes from the tag resolver
(``tags.py``); the bytes from the chain of manifest sources (``chains.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..accounting import Accounting, Origin
from ..errors import ManifestUnknown, RegistryError
from ..links import Links
from ..oci import MANIFEST_TYPES, Digest, accepted_manifest_types, parse_digest
from ..singleflight import SingleFlight
from ..store.index import TagKey
from ..store.usage import UsageLog
from ..upstream.client import Upstream
from .bodies import ManifestBodies
from .source import Found, ManifestSource
from .tags import ManifestOptions, TagResolver, never


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest answer: body is None for HEAD."""

    digest: str
    media_type: str
    size: int
    body: bytes | None
    # "upstream", "shared" or "peer" when this request's own transfer brought the body.
    origin: Origin = "cache"
    # Why a tag's answer is served stale (its rule's reason: 429, 5xx, offline, 404,
    # 401, 403), or None: confirmed within its freshness.
    stale: str | None = None


# (digest, upstream, repository, asks another node) -> the manifest: one fetch of a
# manifest at a time. The pair is in the key: a request under another repository
# never joins a fetch the upstream answered for this one; the flag, as for tags
# (tags.Resolutions), keeps a peer's request out of a fetch that asks a peer.
Fetches = SingleFlight[tuple[str, str, str, bool], Found]
# (upstream, repository, digest, media type, body or None) -> raises to refuse the
# answer before it is served or counted (the signature policy, cacheproxy/policy/).
ManifestCheck = Callable[[Upstream, str, str, str, bytes | None], Awaitable[None]]


class ManifestService:
    """Manifests for one kind of caller: clients (who may ask peers) or peers."""

    def __init__(
        self,
        tags: TagResolver,
        chain: ManifestSource,
        bodies: ManifestBodies,
        links: Links,
        options: ManifestOptions,
        flights: Fetches,
        usage: UsageLog,
        accounting: Accounting,
        asks: Callable[[str], bool] | None = None,
        check: ManifestCheck | None = None,
    ) -> None:
        self._tags = tags
        self._chain = chain
        self._bodies = bodies
        self._links = links
        self._options = options
        self._flights = flights
        self._usage = usage
        self._accounting = accounting
        #: Cluster mode, a client's caller: whether a key's fetch would ask its owner.
        self._cluster = asks is not None
        self._asks = asks or never
        self._check = check

    async def manifest(
        self, up: Upstream, name: str, reference: str, accept: list[str], want_body: bool
    ) -> Manifest:
        """The manifest ``reference`` (a tag or a digest) names, if the Accept admits it.

        A GET's answer is counted (last use, the ledger) under its origin, once the
        check (if any) let it be served.
        """
        admitted = accepted_manifest_types(accept)
        if not admitted:
            raise ManifestUnknown("no manifest media type in the request's Accept is served")
        if ":" in reference:
            answer = await self._by_digest(up, name, parse_digest(reference), admitted, want_body)
        else:
            answer = await self._by_tag(up, TagKey(up.name, name, reference, admitted), want_body)
        if self._check is not None:
            await self._check(up, name, answer.digest, answer.media_type, answer.body)
        if answer.body is not None and ":" not in reference:
            self._usage.tag(up.name, name, reference)
        if answer.body is not None:
            self._usage.blob(answer.digest)
            self._accounting.served(up.name, name, "manifest", answer.origin, answer.size)
        return answer

    async def refresh(self, up: Upstream, name: str, tag: str) -> str:
        """Ask the upstream what ``tag`` names now, whatever its freshness or pin, for
        every Accept class it is resolved for here (one ask each; any class when it is
        not resolved at all); the digest the first names."""
        keys = await self._tags.classes(up.name, name, tag)
        digests = [
            (await self._tags.refresh(up, key)).entry.digest
            for key in keys or [TagKey(up.name, name, tag, MANIFEST_TYPES)]
        ]
        return digests[0]

    async def forget(self, up: Upstream, name: str, tag: str) -> None:
        """Drop what this node knows ``tag`` names (every Accept class): its next use
        asks again (the owner, in a cluster, which has just refreshed it)."""
        await self._tags.forget(up.name, name, tag)

    async def _by_tag(self, up: Upstream, key: TagKey, want_body: bool) -> Manifest:
        resolution = await self._tags.entry(up, key, want_body)
        entry, brought = resolution.entry, resolution.found
        body, origin = None, brought.origin if brought is not None else None
        if want_body:
            if brought is not None and str(brought.digest) == entry.digest:
                # The answer that named it brought it (its digest is linked by then).
                self._links.hint(up.name, key.name, entry.digest, brought.body)
                body = brought.body
            else:
                found, fetched = await self._body(up, key.name, parse_digest(entry.digest))
                body, origin = found.body, origin or fetched
        return Manifest(
            entry.digest, entry.media_type, entry.size, body, origin or "cache", resolution.stale
        )

    async def _by_digest(
        self, up: Upstream, name: str, digest: Digest, admitted: tuple[str, ...], want_body: bool
    ) -> Manifest:
        found, origin = await self._body(up, name, digest)
        if found.media_type not in admitted:
            raise ManifestUnknown(
                f"manifest is {found.media_type}, which the request's Accept does not admit"
            )
        body = found.body if want_body else None
        return Manifest(str(digest), found.media_type, len(found.body), body, origin or "cache")

    async def _body(self, up: Upstream, name: str, digest: Digest) -> tuple[Found, Origin | None]:
        """The manifest, and where this call's own transfer got it (None: the cache, or
        another request's transfer). Served under (``up``, ``name``) only by the links
        rule."""
        cached = await self._bodies.cached(digest)
        # In a cluster the fetch would ask a peer first: the pair is confirmed first,
        # held or not, as for blobs (blobs/chains.py), unless a manifest served here
        # named it (an index's platform manifests).
        ask_first = self._cluster and not self._links.hinted(up.name, name, str(digest))
        await self._links.vouch(up, name, digest, "manifest", held=cached is not None or ask_first)
        origin: Origin | None = None
        if cached is not None:
            media_type = await self._bodies.media_type(digest, cached)
            found = Found(digest, media_type, cached, "cache")
        else:
            if self._options.offline:
                raise ManifestUnknown("not in the cache, and the proxy is offline")
            key = (str(digest), up.name, name, self._asks(str(digest)))
            try:
                found, leader = await self._flights.run_leading(
                    key, lambda: self._chain.by_digest(up, name, digest)
                )
            except RegistryError as exc:
                self._links.refuse(up.name, name, str(digest), exc)
                raise
            if leader:
                origin = found.origin
                # This call's own fetch: the upstream (or a node or the bucket, under
                # this rule for this pair) answered for the manifest here. What it
                # names is not linked (see cacheproxy/links.py).
                await self._links.add(up.name, name, [str(digest)])
        self._links.hint(up.name, name, str(digest), found.body)
        return found, origin
