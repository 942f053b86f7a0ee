"""Redirect mode (``shared.redirect``): a central mirror answers a blob GET with a 307
to a short-lived presigned URL of the bucket, so it carries none of the bytes.

This link comes after the links rule (``vouched.py``) and applies it again for the
bucket (``shared.tier.may_read``): the first link passes a digest this node does
not hold, trusting the upstream fetch that would follow, and a redirect is no such
fetch. A blob the bucket does not hold yet, or whose object this node has not seen
match the digest, is served as usual (written back, or read and verified).
"""

from __future__ import annotations

import logging

from ..accounting import Accounting, Origin
from ..links import Links
from ..shared.tier import SharedTier, may_read
from .source import BlobSource, Body, Sink, Want

log = logging.getLogger(__name__)


class RedirectBody:
    """A blob the client is sent elsewhere for: the handler answers 307 to ``location``."""

    origin: Origin = "shared"

    def __init__(self, location: str, size: int) -> None:
        self.location = location
        self._size = size

    async def size(self) -> int:
        return self._size

    async def final_size(self) -> int:
        return self._size

    async def send(self, sink: Sink, start: int, end: int | None) -> None:
        raise RuntimeError("a redirected blob is not sent by the proxy")

    def close(self) -> None:
        return None

    def vouches(self, upstream: str, repo: str) -> bool:
        return True  # the links rule was applied for the bucket (may_read)


class Redirect:
    """Redirects to the bucket what it holds; asks ``next`` for everything else."""

    def __init__(
        self, tier: SharedTier, links: Links, next: BlobSource, accounting: Accounting
    ) -> None:
        self._tier = tier
        self._links = links
        self._next = next
        self._accounting = accounting

    async def open(self, want: Want, first: int = 0) -> Body:
        tier = self._tier
        # Only an object this node has seen match its digest: clients are sent to the
        # bucket unseen, so a wrong object (another cluster's, a tampered one) is
        # served through a fill first, which verifies it (or reports it and falls back).
        # The links rule before the bucket's HEAD: a pair the upstream refuses is
        # refused alike whether the bucket holds the digest or not.
        size = None
        if tier.is_checked(want.digest) and await may_read(
            self._links, want.upstream, want.repo, want.digest
        ):
            size = await tier.size(want.digest)
        if size is not None:
            try:
                url = await tier.signer.presign(
                    "get_object", tier.settings.redirect_expires, Key=tier.key(want.digest)
                )
            except Exception as exc:  # botocore raises many kinds (no credentials, ...)
                tier.fault("signing", type(exc).__name__)
            else:
                tier.stats.count_redirect()
                # The client's GET of the bucket is billed to the bucket's owner.
                self._accounting.shared(want.upstream.name, want.repo, "get", 1, size - first)
                return RedirectBody(url, size)
        return await self._next.open(want, first)

    async def size(self, want: Want) -> int:
        return await self._next.size(want)
