"""The composition root: every part of a running proxy, built from one Config.

``serve`` and every subcommand open a :class:`Runtime` and take what they need;
nothing else wires parts together. The chains of blob sources are composed here,
in the order a request walks them::

    clients: local store -> fills in flight -> peers -> upstream
    peers:   local store -> fills in flight ->          upstream
    offline: local store
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from .accounting import Accounting, NullAccounting
from .blobs.fill import FillOptions
from .blobs.inflight import Fills, InFlight
from .blobs.local import LocalStore, Nowhere
from .blobs.peers import PeerSource
from .blobs.service import BlobService
from .blobs.source import BlobSource, Remote
from .blobs.upstream import UpstreamSource
from .config import Config
from .layout import CacheLayout
from .lifecycle.keeper import Keeper, Upkeep
from .lifecycle.plan import Rules
from .manifests.bodies import ManifestBodies
from .manifests.listing import TagLister
from .manifests.peers import PeerManifests
from .manifests.resolve import ManifestOptions, Resolutions, TagResolver
from .manifests.service import Fetches, ManifestService
from .peers.cluster import Cluster, start_cluster
from .savings.ledger import Ledger
from .singleflight import SingleFlight
from .sizes import parse_size
from .store.files import BlobStore
from .store.index import Index
from .store.usage import UsageLog
from .upstream.pool import UpstreamPool

log = logging.getLogger(__name__)


@dataclass
class Callers:
    """The services one kind of caller gets: clients, or the cluster's other nodes."""

    blobs: BlobService
    manifests: ManifestService


class Readiness:
    """What keeps the proxy from serving, if anything (``/readyz``)."""

    def __init__(self, store: BlobStore, index: Index) -> None:
        self._store = store
        self._index = index

    async def problems(self) -> list[str]:
        found = []
        if not await asyncio.to_thread(self._store.writable):
            found.append(f"cache directory {self._store.root} is not writable")
        if not await self._index.ping():
            found.append("metadata index does not answer")
        return found


@dataclass
class Runtime:
    """A running proxy's parts."""

    config: Config
    layout: CacheLayout
    store: BlobStore
    index: Index
    usage: UsageLog
    upstreams: UpstreamPool
    fills: Fills
    clients: Callers
    tag_lists: TagLister
    readiness: Readiness
    # Serving only: the other nodes' view, the ledger, the keeper.
    peers: Callers | None = None
    cluster: Cluster | None = None
    ledger: Ledger | None = None
    keeper: Keeper | None = None


@asynccontextmanager
async def open_runtime(config: Config, *, serving: bool = False) -> AsyncIterator[Runtime]:
    """Build the parts ``config`` describes; close them all on exit.

    ``serving``: the server's runtime (cluster, ledger, keeper, credentials checked
    at start); otherwise the machinery a command-line tool needs, nothing in the
    background.
    """
    layout = CacheLayout(config.cache_dir)
    store = BlobStore(layout)
    await asyncio.to_thread(store.prepare)
    async with AsyncExitStack() as stack:
        ledger = None
        accounting: Accounting = NullAccounting()
        if serving:
            ledger = Ledger(layout.ledger, flush_interval=config.savings_flush_interval)
            # Closed last: everything closing before it may still report counts.
            stack.push_async_callback(ledger.close)
            accounting = ledger
        index = await asyncio.to_thread(Index, layout.index)
        stack.push_async_callback(asyncio.to_thread, index.close)
        usage = UsageLog()
        stack.push_async_callback(usage.close, index)
        upstreams = UpstreamPool(config)
        stack.push_async_callback(upstreams.close)
        cluster = None
        if serving:
            await asyncio.to_thread(upstreams.check)
            cluster = await start_cluster(config)
            if cluster is not None:
                stack.push_async_callback(cluster.close)
        fill_options = FillOptions(
            max_blob_size=parse_size(config.max_blob_size, 0),
            segment_min_size=parse_size(config.segment_min_size, 0),
        )
        fills = Fills(store, accounting, fill_options)
        stack.push_async_callback(fills.close)

        options = ManifestOptions(
            config.tag_ttl, config.max_stale, config.max_manifest_bytes, config.offline
        )
        bodies = ManifestBodies(store, index, accounting)
        resolutions: Resolutions = SingleFlight()
        fetches: Fetches = SingleFlight()
        stack.push_async_callback(resolutions.close)
        stack.push_async_callback(fetches.close)
        peer_manifests = None
        if cluster is not None:
            peer_manifests = PeerManifests(cluster, config.max_manifest_bytes)

        def manifests(peers: PeerManifests | None, counted: Accounting) -> ManifestService:
            tags = TagResolver(index, bodies, options, resolutions, peers, time.time)
            return ManifestService(tags, bodies, options, fetches, peers, usage, counted)

        min_free = parse_size(config.min_free, store.total_bytes())

        def room() -> bool:
            return store.free_bytes() >= min_free

        def chain(ask_peers: bool) -> BlobSource:
            if config.offline:
                return LocalStore(store, Nowhere("not in the cache, and the proxy is offline"))
            remote: Remote = UpstreamSource(lanes=config.upstream_segments)
            if ask_peers and cluster is not None:
                remote = PeerSource(cluster, remote)
            # A peer's request never joins a fill fed through peers: two nodes with
            # different views of membership could otherwise wait on each other.
            return LocalStore(store, InFlight(fills, remote, room, join_peer_fed=ask_peers))

        clients = Callers(
            BlobService(chain(ask_peers=True), usage, accounting),
            manifests(peer_manifests, accounting),
        )
        # A peer's request is answered here, never forwarded, and not in the ledger.
        peers = None
        if cluster is not None:
            peers = Callers(
                BlobService(chain(ask_peers=False), usage, NullAccounting()),
                manifests(None, NullAccounting()),
            )
        runtime = Runtime(
            config=config,
            layout=layout,
            store=store,
            index=index,
            usage=usage,
            upstreams=upstreams,
            fills=fills,
            clients=clients,
            tag_lists=TagLister(config.max_manifest_bytes),
            readiness=Readiness(store, index),
            peers=peers,
            cluster=cluster,
            ledger=ledger,
        )
        if serving:
            keeper = Keeper(_upkeep(config, store), store, index, usage)
            stack.push_async_callback(keeper.close)
            fills.on_commit.append(keeper.poke)
            await keeper.start()
            runtime.keeper = keeper
            usage.start(index)
            assert ledger is not None
            await ledger.start()
        yield runtime


def _upkeep(config: Config, store: BlobStore) -> Upkeep:
    limit = None
    if config.max_size is not None:
        limit = parse_size(config.max_size, store.total_bytes())
    return Upkeep(
        rules=Rules(config.keep, config.expire_days, config.max_tags_per_repo),
        limit=limit,
        evict_interval=config.evict_interval,
        hot_window=config.hot_window,
        gc_interval=config.gc_interval,
    )
