"""The owner link (cluster mode): a manifest, or what a tag names, from the node that
owns its key, asked before this node's own upstream.

Bytes by digest may come from anyone: they are verified. What a tag names, and a
manifest's media type (kept with the digest for good), are believed only from the
owner's signed answer; an unsigned answer by digest gets the type its bytes give.
A node that cannot answer (down, refusing, wrong) sends the request on to the next
in rank, then to the rest of the chain.
"""

from __future__ import annotations

from ..errors import RegistryError, UpstreamUnavailable
from ..oci import MANIFEST_TYPES, Digest, manifest_media_type
from ..peers.cluster import Cluster
from ..store.index import TagEntry, TagKey
from ..upstream.client import Upstream, read_bounded
from .source import BadManifest, Found, ManifestSource, Named, verify


class OwnerManifests:
    """Asks the owners of a manifest's or a tag's key; ``next`` for what they lack."""

    def __init__(self, cluster: Cluster, limit: int, next: ManifestSource) -> None:
        self._cluster = cluster
        self._limit = limit
        self._next = next

    async def by_digest(self, up: Upstream, repo: str, digest: Digest) -> Found:
        for peer in self._cluster.candidates(str(digest)):
            found = await self._ask(peer, up.name, repo, str(digest), MANIFEST_TYPES)
            if found is not None and found.digest == digest:
                return found
        return await self._next.by_digest(up, repo, digest)

    async def resolve(self, up: Upstream, key: TagKey, known: TagEntry | None, body: bool) -> Named:
        for peer in self._cluster.candidates(key.owner_key()):
            found = await self._ask(peer, up.name, key.name, key.tag, key.accept)
            if found is not None:
                return Named(str(found.digest), found.media_type, len(found.body), found)
        return await self._next.resolve(up, key, known, body)

    async def _ask(
        self, peer: str, upstream: str, repo: str, reference: str, accept: tuple[str, ...]
    ) -> Found | None:
        """``peer``'s answer, verified, or None (the caller asks the next)."""
        cluster = self._cluster
        cluster.stats.count_manifest_request()
        try:
            resp = await cluster.get(
                peer,
                f"/manifests/{reference}",
                {"upstream": upstream, "repo": repo},
                {"Accept": ", ".join(accept)},
            )
        except UpstreamUnavailable:
            return None
        async with resp:
            if resp.status != 200:
                return None
            try:
                body = await read_bounded(resp, self._limit)
            except RegistryError:
                cluster.membership.mark_bad(peer, "broke off a manifest")
                return None
            claimed = resp.headers.get("Docker-Content-Digest", "")
            header_type = resp.headers.get("Content-Type", "")
            signed = cluster.signed_answer(resp, [upstream, repo, reference, claimed, header_type])
        if ":" not in reference and not signed:
            # Only content addressed by digest may come unauthenticated.
            self._bad(peer, "answered a tag without a valid signature")
            return None
        try:
            digest = verify(body, claimed)
        except BadManifest:
            self._bad(peer, "sent a manifest that failed verification")
            return None
        # The media type is kept with the digest for good (the index): from a signed
        # answer, or from the verified bytes alone, never from a header anyone on the
        # network could have written.
        media_type = (
            header_type.split(";")[0].strip() if signed else manifest_media_type(body, None)
        )
        if media_type not in accept:
            self._bad(peer, "sent a manifest of a type it was not asked for")
            return None
        return Found(digest, media_type, body, "peer")

    def _bad(self, peer: str, why: str) -> None:
        self._cluster.stats.count_bad_content()
        self._cluster.membership.mark_bad(peer, why)
