"""The shared tier as the rest of the proxy sees it: the bucket, whether it is
healthy, what it holds (as far as this node knows), and its counters.

A fault (the bucket unreachable, slow, refusing with 403, failing with 5xx) never
reaches a client: the caller goes to the upstream, a counter goes up, a warning is
logged (rate-limited per kind by ``cacheproxy.logs``), and the bucket is left alone
for a while, doubling up to a minute while faults go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import SharedConfig
from ..errors import REFUSALS, RegistryError
from ..links import Kind, Links
from ..oci import Digest
from ..upstream.client import Upstream
from .keys import object_key
from .s3 import S3, S3Unavailable

log = logging.getLogger(__name__)

FIRST_BACKOFF = 2.0
MAX_BACKOFF = 60.0
# What the bucket is known to hold: remembered this long, for this many digests. A
# miss is remembered briefly (it is written back soon after).
PRESENT_TTL = 300.0
ABSENT_TTL = 5.0
PRESENCE_MAX = 100_000
# A write-back of a digest whose GET answered 404 this recently sends no HEAD first:
# the GET's 404 was the existence check (another proxy writing it meanwhile costs a
# second PUT of the same bytes, nothing worse).
MISS_FRESH = 600.0


@dataclass
class SharedStats:
    """Counters for /metrics and the tests, moved by the methods below (and the
    tier's own) alone."""

    gets: int = 0
    heads: int = 0
    hits: int = 0
    misses: int = 0
    resumed: int = 0
    bad_objects: int = 0
    deleted_bad: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    upload_requests: int = 0
    already_there: int = 0
    upload_failures: int = 0
    uploads_dropped: int = 0
    redirects: int = 0
    aborted_uploads: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def count_get(self) -> None:
        self.gets += 1

    def count_hit(self) -> None:
        self.hits += 1

    def count_miss(self) -> None:
        self.misses += 1

    def count_resumed(self) -> None:
        self.resumed += 1

    def count_redirect(self) -> None:
        self.redirects += 1

    def count_upload(self, requests: int, size: int) -> None:
        """An object of ``size`` bytes was written, in ``requests`` PUTs and POSTs."""
        self.uploads += 1
        self.upload_requests += requests
        self.upload_bytes += size

    def count_already_there(self) -> None:
        self.already_there += 1

    def count_upload_failure(self) -> None:
        self.upload_failures += 1

    def count_upload_dropped(self) -> None:
        self.uploads_dropped += 1

    def count_aborted_uploads(self, aborted: int) -> None:
        self.aborted_uploads += aborted


class SharedTier:
    """The bucket behind this node's cache."""

    def __init__(
        self,
        s3: S3,
        settings: SharedConfig,
        clock: Callable[[], float] = time.monotonic,
        signer: S3 | None = None,
    ) -> None:
        """``signer``: what signs the URLs redirect mode hands to clients (default:
        ``s3``, the tier's own credentials)."""
        self.s3 = s3
        self.signer = signer or s3
        self.settings = settings
        self.stats = SharedStats()
        self._clock = clock
        self._down_until = 0.0
        self._backoff = FIRST_BACKOFF
        self._present: OrderedDict[str, tuple[int | None, float]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._missed: OrderedDict[str, float] = OrderedDict()
        # Objects whose bytes this node checked against the digest: it wrote them from a
        # verified file, or a fill read them whole and they matched.
        self._verified: OrderedDict[str, None] = OrderedDict()

    def key(self, digest: Digest) -> str:
        return object_key(self.settings.root, digest)

    # --- health --------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether to ask the bucket now (False for a while after a fault)."""
        return self._clock() >= self._down_until

    def down_for(self) -> float:
        """Seconds until the bucket is asked again (0 when it is up)."""
        return max(0.0, self._down_until - self._clock())

    def fault(self, kind: str, detail: str) -> None:
        """The bucket failed: count it, say so (rate-limited), and leave it alone a while."""
        self.stats.faults[kind] += 1
        now = self._clock()
        if now >= self._down_until:
            self._down_until = now + self._backoff
            log.warning(
                "shared tier %s: %s; the upstream serves for %.0f s",
                self.settings.bucket,
                kind,
                self._backoff,
            )
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        log.info("shared tier fault (%s): %s", kind, detail)

    def worked(self) -> None:
        """The bucket answered as it should."""
        self._backoff = FIRST_BACKOFF

    # --- what it holds ---------------------------------------------------------------

    def remember(self, digest: Digest, size: int | None) -> None:
        """The bucket holds ``digest`` (of ``size`` bytes), or does not (None)."""
        key = str(digest)
        ttl = PRESENT_TTL if size is not None else ABSENT_TTL
        self._present[key] = (size, self._clock() + ttl)
        self._present.move_to_end(key)
        if len(self._present) > PRESENCE_MAX:
            self._present.popitem(last=False)

    def missed(self, digest: Digest) -> None:
        """A GET of ``digest`` answered 404 just now."""
        self.remember(digest, None)
        key = str(digest)
        self._missed[key] = self._clock()
        self._missed.move_to_end(key)
        if len(self._missed) > PRESENCE_MAX:
            self._missed.popitem(last=False)

    def missed_lately(self, digest: Digest) -> bool:
        """Whether a GET of ``digest`` answered 404 within MISS_FRESH seconds."""
        at = self._missed.pop(str(digest), None)
        return at is not None and self._clock() - at < MISS_FRESH

    def forget(self, digest: Digest) -> None:
        self._present.pop(str(digest), None)
        self._verified.pop(str(digest), None)

    def checked(self, digest: Digest) -> None:
        """The bucket's object of ``digest`` is known to match it (written from a
        verified file, or read whole by a fill that verified it)."""
        key = str(digest)
        self._verified[key] = None
        self._verified.move_to_end(key)
        if len(self._verified) > PRESENCE_MAX:
            self._verified.popitem(last=False)

    def is_checked(self, digest: Digest) -> bool:
        return str(digest) in self._verified

    async def size(self, digest: Digest) -> int | None:
        """The object's size, or None when the bucket lacks it or cannot say now."""
        known = self._present.get(str(digest))
        if known is not None and known[1] > self._clock():
            return known[0]
        if not self.up:
            return None
        self.stats.heads += 1
        try:
            stat = await self.s3.head(self.key(digest))
        except S3Unavailable as exc:
            self.fault(exc.kind, exc.detail)
            return None
        self.worked()
        size = stat.size if stat is not None else None
        self.remember(digest, size)
        return size

    # --- a wrong object ----------------------------------------------------------------

    def bad_object(self, digest: Digest, etag: str) -> None:
        """The bucket's copy of ``digest`` failed verification: it is deleted (in the
        background), so nothing serves it again and the next write-back replaces it."""
        self.stats.bad_objects += 1
        self.forget(digest)
        log.error(
            "shared tier %s: the object of %s (ETag %s) does not match its digest; deleting it",
            self.settings.bucket,
            digest,
            etag or "unknown",
        )
        task = asyncio.create_task(self._delete_bad(digest, etag), name=f"delete bad {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete_bad(self, digest: Digest, etag: str) -> None:
        key = self.key(digest)
        try:
            stat = await self.s3.head(key)
            # Another proxy may have put a good copy there since: delete only what was
            # read (without an ETag to tell, nothing is deleted; it is only forgotten).
            if stat is not None and etag and stat.etag == etag:
                await self.s3.delete(key)
                self.stats.deleted_bad += 1
        except S3Unavailable as exc:
            self.fault(exc.kind, f"deleting a wrong object: {exc.detail}")

    async def close(self) -> None:
        """Stop background work and close the connections."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.s3.close()
        if self.signer is not self.s3:
            await self.signer.close()


async def may_read(
    links: Links, up: Upstream, repo: str, digest: Digest, kind: Kind = "blob"
) -> bool:
    """Whether the bucket's copy of ``digest`` may be served under (``up``, ``repo``).

    Authorization does not travel with content: the bucket holds what any proxy of
    the company fetched, under any repository. So the links rule applies as for a
    digest this node holds: linked here, or confirmed by the upstream with one HEAD
    under that repository (cacheproxy/links.py). The upstream's refusal there is
    raised: it is the answer under that repository, and asking again with a GET would
    cost a second request that a digest this node holds (refused by the one HEAD)
    never costs, so the count of upstream requests would tell the two apart. False
    (the upstream cannot confirm now) sends the request on to the upstream.
    """
    try:
        await links.vouch(up, repo, digest, kind, held=True)
    except REFUSALS:
        raise
    except RegistryError:
        # The upstream cannot confirm now: it cannot vouch, so the bucket is not asked.
        return False
    return True
