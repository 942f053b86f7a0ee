"""Asking a peer for a manifest by tag or digest (cluster mode); every answer verified."""

from __future__ import annotations

from ..errors import DigestInvalid, RegistryError, UpstreamUnavailable
from ..oci import Digest, digest_of, manifest_media_type, parse_digest
from ..peers.cluster import Cluster
from ..upstream.client import read_bounded


class PeerManifests:
    """The owner of a tag or manifest digest, asked before this node's own upstream."""

    def __init__(self, cluster: Cluster, limit: int) -> None:
        self._cluster = cluster
        self._limit = limit

    def candidates(self, key: str) -> list[str]:
        return self._cluster.candidates(key)

    async def ask(
        self, peer: str, upstream: str, repo: str, reference: str, accept: tuple[str, ...]
    ) -> tuple[Digest, bytes, str] | None:
        """A manifest from ``peer``: its bytes checked against the digest, and for a tag
        the peer's signature over what the tag names. Its media type is the signed
        one, or (an unsigned answer by digest) the bytes' own. None when the peer
        cannot give one (the caller then asks the next, or its upstream)."""
        cluster = self._cluster
        cluster.stats.manifest_requests += 1
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
                cluster.stats.bad_content += 1
                cluster.membership.mark_bad(peer, "answered a tag without a valid signature")
                return None
        try:
            digest = parse_digest(claimed)
        except DigestInvalid:
            return None
        if digest_of(body, digest.algorithm) != digest:
            cluster.stats.bad_content += 1
            cluster.membership.mark_bad(peer, "sent a manifest that failed verification")
            return None
        # The media type is kept with the digest for good (the index): it comes from a
        # signed answer, or from the verified bytes alone, never from a header anyone
        # on the network could have written.
        if signed:
            media_type = header_type.split(";")[0].strip()
        else:
            media_type = manifest_media_type(body, None)
        if media_type not in accept:
            cluster.stats.bad_content += 1
            cluster.membership.mark_bad(peer, "sent a manifest of a type it was not asked for")
            return None
        return digest, body, media_type
