"""What brings blobs in and says who may have them: the disk's budget, the links,
the registry of fills, and what follows each fill here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..accounting import Accounting
from ..blobs.admission import FillLimits
from ..blobs.disk import DiskBudget
from ..blobs.fill import Fill
from ..blobs.fillstate import FillOptions
from ..blobs.inflight import Fills
from ..config import Config
from ..lifecycle.keeper import Keeper
from ..links import Links, derive_links
from ..manifests.freshness import FreshnessRules
from ..rates import rates_of
from ..shared.tier import SharedTier
from ..shared.writeback import WriteBack
from ..sizes import parse_size
from .storage import Storage


def size_limit(config: Config, storage: Storage) -> int | None:
    """The cache's limit in bytes (``max_size``, a share of the disk resolved now)."""
    if not config.max_size:
        return None
    return parse_size(config.max_size, storage.store.total_bytes())


def freshness_rules(config: Config) -> FreshnessRules:
    """The ``[[freshness]]`` rules, ``tag_ttl`` and ``max_stale`` their defaults."""
    return FreshnessRules(config.freshness, config.tag_ttl, config.max_stale)


def disk_budget(config: Config, storage: Storage) -> DiskBudget:
    """Disk for fills: ``min_free`` on the disk and the cache's limit."""
    return DiskBudget(size_limit(config, storage), config.min_free, storage.store.disk_space)


@asynccontextmanager
async def open_links(config: Config, storage: Storage) -> AsyncIterator[Links]:
    """The links rule over the cache's index (an older cache's links derived once)."""
    rules = freshness_rules(config)
    links = Links(
        storage.index, offline=config.offline, ttl=config.link_ttl, tolerates=rules.tolerates
    )
    await asyncio.to_thread(derive_links, storage.store, storage.index)
    try:
        yield links
    finally:
        await links.close()


class FollowUps:
    """What follows a fill's end on this node (``blobs.inflight.FillEvents``): the
    link, and when serving, the bucket's check, the upload and the keeper's look."""

    def __init__(
        self,
        links: Links,
        shared: SharedTier | None = None,
        writeback: WriteBack | None = None,
        keeper: Keeper | None = None,
    ) -> None:
        self._links = links
        self._shared = shared
        self._writeback = writeback
        self._keeper = keeper

    async def vouched(self, fill: Fill) -> None:
        # Fetched under the starter's repository: that upstream vouched for it.
        await self._links.add(fill.upstream, fill.repo, [str(fill.digest)])

    async def committed(self, fill: Fill) -> None:
        if self._shared is not None and fill.origin == "shared":
            # Read whole from the bucket and verified: a redirect may send clients there.
            self._shared.checked(fill.digest)
        if self._writeback is not None and fill.origin == "upstream":
            # Only what came from an upstream: a peer's or the bucket's bytes are there
            # already (or are the owner's to write).
            self._writeback.blob(fill.digest, fill.upstream, fill.repo)
        if self._keeper is not None:
            self._keeper.poke()  # a blob was added: the limit is checked soon

    def failed(self, fill: Fill) -> None:
        # The upstream's refusal of the pair is remembered for a while (links.py).
        if fill.error is not None:
            self._links.refuse(fill.upstream, fill.repo, str(fill.digest), fill.error)


@asynccontextmanager
async def open_fills(
    config: Config,
    storage: Storage,
    accounting: Accounting,
    budget: DiskBudget,
    follow_ups: FollowUps,
) -> AsyncIterator[Fills]:
    """The registry of fills: bounded (fill slots, the disk budget), followed up by
    ``follow_ups``; every fill still running is cancelled on exit."""
    options = FillOptions(
        max_blob_size=parse_size(config.max_blob_size, 0),
        segment_min_size=parse_size(config.segment_min_size, 0),
        rates=rates_of(config.upstream_rate, config.peer_upload_rate, config.prefetch_rate),
    )
    limits = FillLimits(config.max_fills, config.max_queued_fills, config.max_fills_per_client)
    fills = Fills(storage.store, accounting, options, limits, budget, follow_ups)
    try:
        yield fills
    finally:
        await fills.close()
