"""The shared-tier link: a bucket other proxies fill too, between peers and the upstream.

In cluster mode only the digest's owner gets here (the peer link asks the owner,
whose own chain walks on to this link), so a cluster asks the bucket once per
miss: the GET itself, whose 404 is the answer. The bucket's bytes are as
unverified as an upstream's: the fill checks every byte against the digest, and
a wrong object is counted, logged, deleted and never served; the client's retry
and every later request get the upstream's bytes. A bucket that is down, slow,
refusing or failing costs a fallback to the upstream, never a client error.
"""

from __future__ import annotations

import logging

import aiohttp

from ..accounting import Accounting, Origin
from ..links import Links
from ..shared.s3 import S3Unavailable
from ..shared.tier import SharedTier, may_read
from .relay import RelayBody
from .source import Body, Feed, Remote, Want

log = logging.getLogger(__name__)

# Bodies from the bucket that may break off (and be resumed from it) in one fill
# before the rest comes from the upstream: a bucket that keeps breaking is slow or
# going away.
BUCKET_RESUMES = 1


class SharedFeed:
    """The blob from the bucket as byte ranges, then ``fallback`` (the upstream).

    The bucket is asked only once the links rule allows serving the digest under
    the request's repository (``may_read``): the bucket holds what any proxy of
    the company fetched, under any repository.
    """

    def __init__(
        self,
        tier: SharedTier,
        links: Links,
        want: Want,
        fallback: Feed,
        accounting: Accounting,
    ) -> None:
        self._tier = tier
        self._links = links
        self._want = want
        self._fallback = fallback
        self._accounting = accounting
        self._key = tier.key(want.digest)
        self._allowed: bool | None = None
        self._on_fallback = False
        # Ranges the bucket was asked for, to tell a lane's resume from a new lane.
        self._asked: list[tuple[int, int | None]] = []
        self._resumes = 0
        self._etag = ""
        self._from_bucket = False

    @property
    def origin(self) -> Origin:
        return self._fallback.origin if self._on_fallback else "shared"

    @property
    def lanes(self) -> int:
        """Ranges of one blob asked for at once (segmented fills)."""
        return self._fallback.lanes if self._on_fallback else self._tier.settings.segments

    async def open(self, start: int, end: int | None = None) -> aiohttp.ClientResponse:
        if not self._on_fallback:
            if self._is_resume(start):
                self._resumes += 1
                self._tier.stats.count_resumed()
                if self._resumes > BUCKET_RESUMES:
                    self._tier.fault("broken-body", f"{self._want.digest} broke off again")
                    self._on_fallback = True
            if not self._on_fallback:
                resp = await self._bucket(start, end)
                if resp is not None:
                    return resp
                self._on_fallback = True
        return await self._fallback.open(start, end)

    def _is_resume(self, start: int) -> bool:
        """Whether ``start`` lies inside a range already asked for: that lane broke off
        (no two lanes ever ask for the same byte)."""
        return any(s <= start and (e is None or start <= e) for s, e in self._asked)

    async def _bucket(self, start: int, end: int | None) -> aiohttp.ClientResponse | None:
        """The bucket's answer, or None to go to the upstream."""
        tier, want = self._tier, self._want
        if not tier.up:
            return None
        if self._allowed is None:
            self._allowed = await may_read(self._links, want.upstream, want.repo, want.digest)
        if not self._allowed:
            return None
        try:
            resp = await tier.s3.get(self._key, start, end, blob=True)
        except S3Unavailable as exc:
            tier.fault(exc.kind, exc.detail)
            return None
        tier.stats.count_get()
        self._accounting.shared(want.upstream.name, want.repo, "get", 1, 0)
        if resp.status in (200, 206):
            tier.worked()
            if not self._asked:
                tier.stats.count_hit()
            self._asked.append((start, end))
            self._from_bucket = True
            self._etag = resp.headers.get("ETag", self._etag)
            return resp
        resp.release()
        if resp.status == 404:
            tier.stats.count_miss()
            tier.missed(want.digest)
            return None
        # Anything else (a 416: an object shorter than the blob) is the bucket's fault,
        # never the client's: the upstream serves it.
        tier.fault("bad-answer", f"GET of {want.digest} answered {resp.status}")
        return None

    def blame(self) -> None:
        if self._from_bucket and not self._on_fallback:
            self._tier.bad_object(self._want.digest, self._etag)
            self._from_bucket = False
        else:
            self._fallback.blame()


class SharedSource:
    """Feeds fills from the bucket (falling back to ``next``)."""

    def __init__(
        self, tier: SharedTier, links: Links, next: Remote, accounting: Accounting
    ) -> None:
        self._tier = tier
        self._links = links
        self._next = next
        self._accounting = accounting

    def feed(self, want: Want) -> Feed:
        fallback = self._next.feed(want)
        if not self._tier.up:
            return fallback
        return SharedFeed(self._tier, self._links, want, fallback, self._accounting)

    async def open(self, want: Want, first: int = 0) -> Body:
        return await RelayBody.open(self.feed(want), want.digest, first)

    async def size(self, want: Want) -> int:
        # A HEAD of a pair linked here may be answered by the bucket; anything else
        # asks the upstream, whose answer is also the links rule.
        if await self._links.known(want.upstream.name, want.repo, str(want.digest)):
            size = await self._tier.size(want.digest)
            if size is not None:
                return size
        return await self._next.size(want)
