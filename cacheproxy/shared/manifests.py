"""Manifests by digest from the shared tier.

A manifest GET is what Docker Hub counts as a pull; a tag is still revalidated by
each proxy with its own upstream (HEAD, not counted), but the body it names may
come from the bucket. The body is checked against the digest before anything
keeps or serves it, and it is read only when the links rule allows the digest
under the request's repository. Its media type comes from the verified bytes, never
from the object's metadata.
"""

from __future__ import annotations

import logging

import aiohttp

from ..accounting import Accounting
from ..errors import RegistryError
from ..links import Links
from ..oci import MANIFEST_TYPES, Digest, digest_of, manifest_media_type
from ..upstream.client import Upstream, read_bounded
from .s3 import S3Unavailable
from .tier import SharedTier, may_read

log = logging.getLogger(__name__)


class SharedManifests:
    """Reads manifests from the bucket (writing them is the write-back's)."""

    def __init__(self, tier: SharedTier, links: Links, accounting: Accounting) -> None:
        self._tier = tier
        self._links = links
        self._accounting = accounting

    async def fetch(
        self, up: Upstream, repo: str, digest: Digest, limit: int
    ) -> tuple[bytes, str] | None:
        """The manifest's verified bytes and media type, or None (not there, not
        allowed under this repository, or the bucket failed: the upstream is next)."""
        tier = self._tier
        if not tier.up or not await may_read(self._links, up, repo, digest, "manifest"):
            return None
        try:
            resp = await tier.s3.get(tier.key(digest))
        except S3Unavailable as exc:
            tier.fault(exc.kind, exc.detail)
            return None
        tier.stats.gets += 1
        self._accounting.shared(up.name, repo, "get", 1, 0)
        async with resp:
            if resp.status == 404:
                tier.stats.misses += 1
                tier.missed(digest)
                return None
            if resp.status != 200:
                tier.fault("bad-answer", f"GET of manifest {digest} answered {resp.status}")
                return None
            etag = resp.headers.get("ETag", "")
            try:
                body = await read_bounded(resp, limit)
            except (aiohttp.ClientError, TimeoutError, RegistryError) as exc:
                tier.fault("broken-body", f"manifest {digest}: {type(exc).__name__}")
                return None
        tier.worked()
        self._accounting.shared(up.name, repo, "get", 0, len(body))
        if digest_of(body, digest.algorithm) != digest:
            tier.bad_object(digest, etag)
            return None
        tier.stats.hits += 1
        # The object's Content-Type is nobody's signature (whoever may write to the
        # bucket set it), and the index keeps the type for good: the bytes alone say.
        media_type = manifest_media_type(body, None)
        if media_type not in MANIFEST_TYPES:
            return None  # not a manifest the bytes can name: the upstream says
        return body, media_type
