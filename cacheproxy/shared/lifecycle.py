"""Upkeep of the bucket: expiry by age (``cacheproxy gc --shared``) and the sweep of
multipart uploads that were started and never finished.

Expiry goes by each object's last write (``LastModified``), as a bucket lifecycle
rule does (docs/shared.md), so the proxy and the rule agree. It walks the
listing a page at a time, so memory stays bounded whatever the bucket holds.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from .keys import Listed, blobs_prefix
from .s3 import S3Unavailable
from .tier import SharedTier

log = logging.getLogger(__name__)

# An upload started this long ago and neither completed nor aborted is abandoned
# (a proxy died mid-upload, or its abort failed); the sweep at start aborts at most
# SWEEP_MAX of them, reading at most SWEEP_PAGES pages of the listing.
ABANDONED_AFTER = dt.timedelta(days=1)
SWEEP_MAX = 1000
SWEEP_PAGES = 20


def expired(objects: Iterable[Listed], now: dt.datetime, expire_days: float) -> list[Listed]:
    """The objects last written ``expire_days`` or more before ``now``. Pure."""
    cutoff = now - dt.timedelta(days=expire_days)
    return [o for o in objects if o.last_modified <= cutoff]


async def expiring(tier: SharedTier, now: dt.datetime, expire_days: float) -> AsyncIterator[Listed]:
    """Every blob object under the prefix that :func:`expired` picks, page by page."""
    token: str | None = None
    prefix = blobs_prefix(tier.settings.root)
    while True:
        page, token = await tier.s3.list_objects(prefix, token)
        for item in expired(page, now, expire_days):
            yield item
        if token is None:
            return


async def gc(tier: SharedTier, now: dt.datetime, expire_days: float, dry_run: bool) -> list[Listed]:
    """Delete (or with ``dry_run`` only list) what :func:`expiring` yields."""
    chosen = []
    async for item in expiring(tier, now, expire_days):
        if not dry_run:
            await tier.s3.delete(item.key)
        chosen.append(item)
    return chosen


async def sweep_uploads(
    tier: SharedTier, now: dt.datetime, busy: Callable[[str], bool] = lambda key: False
) -> int:
    """Abort abandoned multipart uploads under the prefix (bounded); returns how many.

    Their parts are billed as storage until aborted, and never visible as objects.
    ``busy``: keys this node is uploading now, never aborted whatever their age says
    (a clock can be wrong).
    """
    aborted = 0
    after: tuple[str, str] | None = None
    prefix = blobs_prefix(tier.settings.root)
    try:
        for _ in range(SWEEP_PAGES):
            pending, after = await tier.s3.list_uploads(prefix, after)
            for upload in pending:
                if aborted >= SWEEP_MAX:
                    return aborted
                if now - upload.initiated >= ABANDONED_AFTER and not busy(upload.key):
                    await tier.s3.abort_upload(upload.key, upload.upload_id)
                    aborted += 1
            if after is None:
                break
    except S3Unavailable as exc:
        tier.fault(exc.kind, f"sweeping abandoned uploads: {exc.detail}")
    finally:
        tier.stats.count_aborted_uploads(aborted)
        if aborted:
            log.info("shared tier: aborted %d abandoned multipart uploads", aborted)
    return aborted
