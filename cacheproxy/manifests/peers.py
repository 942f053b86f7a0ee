"""Asking a peer for a manifest by tag or digest (cluster mode); every answer verified."""

from __future__ import annotations

from ..errors import DigestInvalid, RegistryError, UpstreamUnavailable
from ..oci import Digest, digest_of, parse_digest
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
        the peer's signature over what the tag names. None when the peer cannot give
        one (the caller then asks the next, or its upstream)."""
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
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            is_tag = ":" not in reference
            if is_tag and not cluster.signed_answer(
                resp, [upstream, repo, reference, claimed, resp.headers.get("Content-Type", "")]
            ):
                # Only content addressed by digest may come unauthenticated.
                cluster.stats.bad_content += 1
                cluster.membership.mark_bad(peer, "answered a tag without a valid signature")
                return None
        try:
            digest = parse_digest(claimed)
        except DigestInvalid:
            return None
        if digest_of(body, digest.algorithm) != digest or media_type not in accept:
            cluster.stats.bad_content += 1
            cluster.membership.mark_bad(peer, "sent a manifest that failed verification")
            return None
        return digest, body, media_type
