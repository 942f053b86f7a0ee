"""What every link of the manifest-source chain answers, and with what.

The twin of the blob chain (``cacheproxy/blobs/source.py``). A manifest by digest,
or what a tag names now, walks the chain until a link has it::

    this node's index -> the owner (cluster mode, signed) -> shared tier -> upstream

Each link is a :class:`ManifestSource` and wraps the next one. What a link answers
carries its origin (the ledger is told by it) and bytes already checked against
their digest by :func:`verify`, the one function that does so. The links after
this node's own keep nothing: the first link keeps what they bring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..accounting import Origin
from ..errors import DigestInvalid, UpstreamBadContent
from ..oci import Digest, digest_of, parse_digest
from ..store.index import TagEntry, TagKey
from ..upstream.client import Upstream


@dataclass(frozen=True, slots=True)
class Found:
    """A manifest's bytes, checked against ``digest``, its media type, and where they
    came from ("cache", "peer", "shared" or "upstream")."""

    digest: Digest
    media_type: str
    body: bytes
    origin: Origin


@dataclass(frozen=True, slots=True)
class Named:
    """What a tag names now, and the manifest itself when the answer brought it."""

    digest: str
    media_type: str
    size: int
    found: Found | None = None

    def entry(self, checked_at: float) -> TagEntry:
        return TagEntry(self.digest, self.media_type, self.size, checked_at)


class ManifestSource(Protocol):
    """One link of the chain."""

    async def by_digest(self, up: Upstream, repo: str, digest: Digest) -> Found:
        """The manifest ``digest`` under (``up``, ``repo``); raises MANIFEST_UNKNOWN (or
        the upstream's own error) when no link has it. The links rule is the caller's
        (``service.py``): a link is asked only for a pair that may be served it."""

    async def resolve(self, up: Upstream, key: TagKey, known: TagEntry | None, body: bool) -> Named:
        """What ``key`` names now, asked past this node's index (``known``: what it named
        last, None: never resolved here). ``body``: the caller wants the manifest too,
        so a link may bring it with the answer."""


class BadManifest(UpstreamBadContent):
    """Bytes that do not match the digest they were sent under."""


def verify(body: bytes, claimed: str) -> Digest:
    """The digest ``body`` was sent under, checked: raises BadManifest when the bytes
    do not match it, or when ``claimed`` is no digest at all."""
    try:
        digest = parse_digest(claimed)
    except DigestInvalid as exc:
        raise BadManifest("a manifest was sent under a malformed digest") from exc
    if digest_of(body, digest.algorithm) != digest:
        raise BadManifest("a manifest does not match its digest")
    return digest
