"""The shared-tier link: manifests by digest from the bucket many proxies share.

A manifest GET is what Docker Hub counts as a pull; a tag is still revalidated by
each proxy with its own upstream (HEAD, not counted), but the body it names may
come from the bucket. The body is checked against the digest before anything
keeps or serves it, and it is read only when the links rule allows the digest
under the request's repository (``shared.tier.may_read``: the bucket holds what any
proxy fetched, under any repository). A bucket that is down, refusing or wrong costs
a fallback to the upstream, never a client error.
"""

from __future__ import annotations

import aiohttp

from ..accounting import Accounting
from ..errors import RegistryError
from ..links import Links
from ..oci import MANIFEST_TYPES, Digest, manifest_media_type
from ..shared.s3 import S3Unavailable
from ..shared.tier import SharedTier, may_read
from ..store.index import TagEntry, TagKey
from ..upstream.client import Upstream, read_bounded
from .source import BadManifest, Found, ManifestSource, Named, verify


class BucketManifests:
    """Reads manifests from the bucket (writing them is the write-back's); ``next``
    for what it lacks."""

    def __init__(
        self,
        tier: SharedTier,
        links: Links,
        accounting: Accounting,
        limit: int,
        next: ManifestSource,
    ) -> None:
        self._tier = tier
        self._links = links
        self._accounting = accounting
        self._limit = limit
        self._next = next

    async def by_digest(self, up: Upstream, repo: str, digest: Digest) -> Found:
        found = await self._bucket(up, repo, digest)
        return found if found is not None else await self._next.by_digest(up, repo, digest)

    async def resolve(self, up: Upstream, key: TagKey, known: TagEntry | None, body: bool) -> Named:
        # Asked without the body: a HEAD is not a pull (Docker Hub), and the manifest
        # it names may then come from the bucket by digest.
        return await self._next.resolve(up, key, known, False)

    async def _bucket(self, up: Upstream, repo: str, digest: Digest) -> Found | None:
        """The bucket's copy, verified, or None (not there, not allowed under this
        repository, or the bucket failed: the upstream is next)."""
        tier = self._tier
        if not tier.up or not await may_read(self._links, up, repo, digest, "manifest"):
            return None
        try:
            resp = await tier.s3.get(tier.key(digest))
        except S3Unavailable as exc:
            tier.fault(exc.kind, exc.detail)
            return None
        tier.stats.count_get()
        self._accounting.shared(up.name, repo, "get", 1, 0)
        async with resp:
            if resp.status == 404:
                tier.stats.count_miss()
                tier.missed(digest)
                return None
            if resp.status != 200:
                tier.fault("bad-answer", f"GET of manifest {digest} answered {resp.status}")
                return None
            etag = resp.headers.get("ETag", "")
            try:
                body = await read_bounded(resp, self._limit)
            except (aiohttp.ClientError, TimeoutError, RegistryError) as exc:
                tier.fault("broken-body", f"manifest {digest}: {type(exc).__name__}")
                return None
        tier.worked()
        self._accounting.shared(up.name, repo, "get", 0, len(body))
        try:
            verify(body, str(digest))
        except BadManifest:
            tier.bad_object(digest, etag)
            return None
        tier.stats.count_hit()
        # The object's Content-Type is nobody's signature (whoever may write to the
        # bucket set it), and the index keeps the type for good: the bytes alone say.
        media_type = manifest_media_type(body, None)
        if media_type not in MANIFEST_TYPES:
            return None  # not a manifest the bytes can name: the upstream says
        return Found(digest, media_type, body, "shared")
