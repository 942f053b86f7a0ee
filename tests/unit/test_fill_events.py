"""What the registry of fills tells the rest of the node (FillEvents), and what a
fill's lease gives back when it ends. Scripted feeds, no network."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import cast

import pytest

from cacheproxy.blobs.disk import DiskBudget
from cacheproxy.blobs.fill import Fill
from cacheproxy.blobs.fillstate import FillState
from cacheproxy.blobs.inflight import Fills
from cacheproxy.blobs.source import Want
from cacheproxy.errors import BlobUnknown
from cacheproxy.sizes import DiskSpace
from cacheproxy.store.files import BlobStore
from cacheproxy.upstream.client import Upstream
from tests.support.images import digest_of
from tests.unit.test_fill import DATA, FakeFeed, whole


class Heard:
    """Every event the registry told, in order, and whether the store held the blob
    when it was told; ``broken``: committed raises."""

    def __init__(self, store: BlobStore | None = None, broken: bool = False) -> None:
        self.events: list[tuple[str, Fill]] = []
        self.broken = broken
        self.store = store
        self.held_when_vouched: list[bool] = []

    async def vouched(self, fill: Fill) -> None:
        self.events.append(("vouched", fill))
        if self.store is not None:
            self.held_when_vouched.append(self.store.exists(fill.digest))

    async def committed(self, fill: Fill) -> None:
        self.events.append(("committed", fill))
        if self.broken:
            raise OSError("the index is gone")

    def failed(self, fill: Fill) -> None:
        self.events.append(("failed", fill))


def want_of(data: bytes) -> Want:
    upstream = cast(Upstream, SimpleNamespace(name="docker.io", pins=0))
    return Want(upstream, "app", digest_of(data))


async def run_fill(fills: Fills, feed: FakeFeed, data: bytes = DATA) -> Fill:
    """Start a fill of ``data`` on ``feed``; return it once the registry is done with it."""
    want = want_of(data)
    fill = fills.start(want, feed, await fills.gate.enter(""))
    assert fill is not None
    async with asyncio.timeout(10):
        await asyncio.gather(*fills._tasks)
    return fill


async def test_a_kept_blob_is_told_vouched_then_committed_and_a_failed_fill_failed(
    store: BlobStore,
) -> None:
    heard = Heard(store)
    fills = Fills(store, events=heard)
    kept = await run_fill(fills, FakeFeed(whole(DATA)))
    assert kept.state is FillState.DONE and store.exists(kept.digest)
    # Vouched (its link written) before the store had it: nobody finds it held and
    # not linked; then committed, once.
    assert heard.events == [("vouched", kept), ("committed", kept)]
    assert heard.held_when_vouched == [False]
    missing = await run_fill(fills, FakeFeed(BlobUnknown("not upstream either")), b"other")
    assert isinstance(missing.error, BlobUnknown)
    assert heard.events == [("vouched", kept), ("committed", kept), ("failed", missing)]
    assert fills.active == 0 and fills.gate.holding("") == 0
    await fills.close()


async def test_a_blob_too_big_to_keep_is_served_and_told_nothing(store: BlobStore) -> None:
    heard = Heard()
    budget = DiskBudget(len(DATA) - 1, ("0",), lambda: DiskSpace(10**12, 10**13))
    fills = Fills(store, budget=budget, events=heard)
    fill = await run_fill(fills, FakeFeed(whole(DATA)))
    assert fill.state is FillState.DONE and not fill.keep and not store.exists(fill.digest)
    assert heard.events == []
    # What the fill announced was given back when it ended.
    assert (budget.reserved, budget.outstanding) == (0, 0)
    await fills.close()


async def test_a_follow_up_that_fails_leaves_the_fill_done(
    store: BlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    heard = Heard(broken=True)
    fills = Fills(store, events=heard)
    fill = await run_fill(fills, FakeFeed(whole(DATA)))
    assert fill.state is FillState.DONE and store.read(fill.digest) == DATA
    assert heard.events == [("vouched", fill), ("committed", fill)]
    assert fills.active == 0
    # Logged with its traceback, and nothing else: the fill's task ended cleanly.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(" sha256:")[0] for r in errors] == ["after caching"]
    caplog.clear()  # the one traceback this test asks for
    await fills.close()
