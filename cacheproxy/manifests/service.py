"""A manifest by tag or digest, as the client's Accept admits, and what it counts as."""

from __future__ import annotations

from dataclasses import dataclass

from ..accounting import Accounting, Origin
from ..errors import ManifestUnknown, RegistryError, UpstreamBadContent
from ..links import Links
from ..oci import (
    MANIFEST_TYPES,
    Digest,
    accepted_manifest_types,
    digest_of,
    manifest_media_type,
    parse_digest,
)
from ..shared.manifests import SharedManifests
from ..singleflight import SingleFlight
from ..store.index import TagKey
from ..store.usage import UsageLog
from ..upstream.client import Upstream, error_for_status, pull_scope, read_bounded
from .bodies import ManifestBodies
from .peers import PeerManifests
from .resolve import ManifestOptions, TagResolver


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest answer: body is None for HEAD."""

    digest: str
    media_type: str
    size: int
    body: bytes | None
    # "upstream", "shared" or "peer" when this request's own transfer brought the body.
    origin: Origin = "cache"


# (digest, upstream, repository, asks peers) -> (body, origin): one fetch of a
# manifest at a time. The pair is in the key: a request under another repository
# never joins a fetch the upstream answered for this one.
Fetches = SingleFlight[tuple[str, str, str, bool], tuple[bytes, Origin]]


class ManifestService:
    """Manifests for one kind of caller: clients (who may ask peers) or peers."""

    def __init__(
        self,
        tags: TagResolver,
        bodies: ManifestBodies,
        links: Links,
        options: ManifestOptions,
        flights: Fetches,
        peers: PeerManifests | None,
        usage: UsageLog,
        accounting: Accounting,
        shared: SharedManifests | None = None,
    ) -> None:
        self._shared = shared
        self._tags = tags
        self._bodies = bodies
        self._links = links
        self._options = options
        self._flights = flights
        self._peers = peers
        self._usage = usage
        self._accounting = accounting

    async def manifest(
        self, up: Upstream, name: str, reference: str, accept: list[str], want_body: bool
    ) -> Manifest:
        """The manifest ``reference`` (a tag or a digest) names, if the Accept admits it.

        A GET's answer is counted (last use, the ledger) under its origin.
        """
        admitted = accepted_manifest_types(accept)
        if not admitted:
            raise ManifestUnknown("no manifest media type in the request's Accept is served")
        if ":" in reference:
            answer = await self._by_digest(up, name, parse_digest(reference), admitted, want_body)
        else:
            answer = await self._by_tag(up, TagKey(up.name, name, reference, admitted), want_body)
            if answer.body is not None:
                self._usage.tag(up.name, name, reference)
        if answer.body is not None:
            self._usage.blob(answer.digest)
            self._accounting.served(up.name, name, "manifest", answer.origin, answer.size)
        return answer

    async def _by_tag(self, up: Upstream, key: TagKey, want_body: bool) -> Manifest:
        entry, origin = await self._tags.entry(up, key, want_body)
        body = None
        if want_body:
            digest = parse_digest(entry.digest)
            body, body_origin = await self._body(up, key.name, digest)
            origin = origin or body_origin
        return Manifest(entry.digest, entry.media_type, entry.size, body, origin or "cache")

    async def _by_digest(
        self, up: Upstream, name: str, digest: Digest, admitted: tuple[str, ...], want_body: bool
    ) -> Manifest:
        body, origin = await self._body(up, name, digest)
        media_type = await self._bodies.media_type(digest, body)
        if media_type not in admitted:
            raise ManifestUnknown(
                f"manifest is {media_type}, which the request's Accept does not admit"
            )
        return Manifest(
            str(digest), media_type, len(body), body if want_body else None, origin or "cache"
        )

    async def _body(self, up: Upstream, name: str, digest: Digest) -> tuple[bytes, Origin | None]:
        """The manifest's bytes, and where this call's own transfer got them (None:
        the cache, or another request's transfer). Served under (``up``, ``name``)
        only by the links rule."""
        body = await self._bodies.cached(digest)
        # With peers, the fetch would ask a peer first: the pair is confirmed first,
        # held or not, as for blobs (blobs/chains.py), unless a manifest served here
        # named it (an index's platform manifests).
        ask_first = self._peers is not None and not self._links.hinted(up.name, name, str(digest))
        await self._links.vouch(up, name, digest, "manifest", held=body is not None or ask_first)
        origin: Origin | None = None
        if body is None:
            if self._options.offline:
                raise ManifestUnknown("not in the cache, and the proxy is offline")
            peers = self._peers.candidates(str(digest)) if self._peers is not None else []
            key = (str(digest), up.name, name, bool(peers))
            try:
                (body, fetched), leader = await self._flights.run_leading(
                    key, lambda: self._fetch(up, name, digest, peers)
                )
            except RegistryError as exc:
                self._links.refuse(up.name, name, str(digest), exc)
                raise
            origin = fetched if leader else None
        if origin is not None:
            # This call's own fetch: the upstream (or a node or the bucket, under this
            # rule for this pair) answered for the manifest here. What it names is
            # not linked (see cacheproxy/links.py).
            await self._links.add(up.name, name, [str(digest)])
        self._links.hint(up.name, name, str(digest), body)
        return body, origin

    async def _fetch(
        self, up: Upstream, name: str, digest: Digest, peers: list[str]
    ) -> tuple[bytes, Origin]:
        for peer in peers:
            assert self._peers is not None
            found = await self._peers.ask(peer, up.name, name, str(digest), MANIFEST_TYPES)
            if found is not None and found[0] == digest:
                _, body, media_type = found
                await self._bodies.keep(up.name, name, digest, body, media_type, "peer")
                return body, "peer"
        if self._shared is not None:
            # After the owner (which asks the bucket itself), before the upstream.
            shared = await self._shared.fetch(up, name, digest, self._options.max_manifest_bytes)
            if shared is not None:
                body, media_type = shared
                await self._bodies.keep(up.name, name, digest, body, media_type, "shared")
                return body, "shared"
        resp = await up.request(
            "GET",
            f"/v2/{name}/manifests/{digest}",
            scope=pull_scope(name),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        async with resp:
            if resp.status != 200:
                raise error_for_status(resp, ManifestUnknown)
            body = await read_bounded(resp, self._options.max_manifest_bytes)
            header_type = resp.headers.get("Content-Type")
        if digest_of(body, digest.algorithm) != digest:
            raise UpstreamBadContent("upstream manifest does not match its digest")
        media_type = manifest_media_type(body, header_type)
        await self._bodies.keep(up.name, name, digest, body, media_type, "upstream")
        return body, "upstream"
