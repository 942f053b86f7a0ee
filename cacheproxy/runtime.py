"""The composition root: every part of a running proxy, built from one Config.

``serve`` and every subcommand open a :class:`Runtime` and take what they need;
nothing else wires parts together. The chains of blob sources are composed here,
in the order a request walks them (the links: blobs/chains.py)::

    clients: vouched -> [redirect] -> local -> fills in flight -> peers -> [shared] -> upstream
    peers:   vouched ->               local -> fills in flight ->          [shared] -> upstream
    pieces:  vouched ->               local -> fills in flight (joined, never started)
    offline: vouched ->               local

"vouched" serves a digest under an (upstream, repository) only when that upstream
vouched for it there (cacheproxy/links.py). "shared" is the bucket many proxies
share ([shared]); in a cluster only a digest's owner asks it (the peer link asks
the owner, whose own chain is the second line). "redirect" (shared.redirect)
answers with a 307 to the bucket what the bucket holds. "pieces" answers a peer's
request for a range of a blob this node holds or is filling (the swarm, with
``peer_holders``: cacheproxy/swarm/, whose asker.py asks and holdings.py answers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from .accounting import Accounting, NullAccounting
from .blobs.admission import DiskBudget, FillLimits
from .blobs.chains import blob_chain, pieces_chain
from .blobs.fill import Fill
from .blobs.fillstate import FillOptions
from .blobs.inflight import Fills
from .blobs.service import BlobService
from .config import Config, ConfigError
from .layout import CacheLayout
from .lifecycle.keeper import Keeper, Upkeep
from .lifecycle.plan import Rules
from .links import Links, derive_links
from .manifests.bodies import ManifestBodies
from .manifests.chains import manifest_chain
from .manifests.listing import TagLister
from .manifests.service import Fetches, ManifestService
from .manifests.tags import ManifestOptions, Resolutions, TagResolver, never
from .peers.cluster import Cluster, start_cluster
from .savings.ledger import Ledger
from .shared.s3 import S3, redirect_signer
from .shared.tier import SharedTier
from .shared.writeback import WriteBack
from .singleflight import SingleFlight
from .sizes import parse_size
from .store.files import BlobStore
from .store.index import Index
from .store.lock import CacheLock
from .store.readiness import Readiness
from .store.usage import UsageLog
from .swarm.holdings import Holdings
from .swarm.node import SwarmNode
from .upstream.egress import egress_deny
from .upstream.pool import UpstreamPool


@dataclass
class Callers:
    """The services one kind of caller gets: clients, or the cluster's other nodes."""

    blobs: BlobService
    manifests: ManifestService


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
    links: Links
    # Serving only: the other nodes' view, the ledger, the keeper.
    peers: Callers | None = None
    cluster: Cluster | None = None
    ledger: Ledger | None = None
    keeper: Keeper | None = None
    # The shared tier ([shared]), and (serving only) its uploads.
    shared: SharedTier | None = None
    writeback: WriteBack | None = None
    # Cluster mode: the swarm's holder lists and upload bound, and the chain that
    # answers a peer's request for a piece.
    holdings: Holdings | None = None
    pieces: BlobService | None = None
    swarms: SwarmNode | None = None


@asynccontextmanager
async def open_runtime(
    config: Config,
    *,
    serving: bool = False,
    writes: bool = True,
    upstream_clock: Callable[[], float] | None = None,
) -> AsyncIterator[Runtime]:
    """Build the parts ``config`` describes; close them all on exit.

    ``serving``: the server's runtime (cluster, ledger, keeper, credentials checked
    at start); otherwise the machinery a command-line tool needs, nothing in the
    background. The server, and a tool that ``writes`` (blobs, or removing temp
    files), hold the cache directory's lock throughout, or raise CacheBusy at once
    when another process holds it; a tool that only reads leaves temp files alone.
    ``upstream_clock``: the monotonic clock of the upstream clients (token lifetimes,
    retry budgets), when not the system's.
    """
    layout = CacheLayout(config.cache_dir)
    store = BlobStore(layout)
    async with AsyncExitStack() as stack:
        if serving or writes:
            lock = await asyncio.to_thread(CacheLock.take, layout.root, layout.lock)
            # Released last: nothing may change the cache after it is let go.
            stack.callback(lock.release)
        await asyncio.to_thread(store.prepare, serving or writes)
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
        try:
            # Reads the node's addresses when egress_deny names "node": in a thread.
            deny = await asyncio.to_thread(egress_deny, config.egress_deny)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        upstreams = UpstreamPool(config, clock=upstream_clock, deny=deny)
        stack.push_async_callback(upstreams.close)
        await upstreams.start()
        cluster = None
        if serving:
            await asyncio.to_thread(upstreams.check)
            cluster = await start_cluster(config)
            if cluster is not None:
                stack.push_async_callback(cluster.close)
        limit = parse_size(config.max_size, store.total_bytes()) if config.max_size else None
        budget = DiskBudget(limit, config.min_free, store.disk_space)
        limits = FillLimits(config.max_fills, config.max_queued_fills, config.max_fills_per_client)
        shared = None
        if config.shared is not None and not config.offline:
            # Closed after the fills (which may be reading from it) have stopped.
            shared = SharedTier(
                S3(config.shared, upstreams.aws),
                config.shared,
                signer=redirect_signer(config.shared, upstreams.aws),
            )
            stack.push_async_callback(shared.close)
        links = Links(index, offline=config.offline, ttl=config.link_ttl)
        await asyncio.to_thread(derive_links, store, index)
        # Serving only: the uploads of what this node fetched (started last), the keeper.
        writeback = WriteBack(shared, store, accounting) if shared is not None and serving else None
        keeper = Keeper(_upkeep(config, limit), store, index, usage, budget) if serving else None
        fill_options = FillOptions(
            max_blob_size=parse_size(config.max_blob_size, 0),
            segment_min_size=parse_size(config.segment_min_size, 0),
        )
        after = _AfterFill(links, shared, writeback, keeper)
        fills = Fills(store, accounting, fill_options, limits, budget, after)
        stack.push_async_callback(fills.close)
        stack.push_async_callback(links.close)

        options = ManifestOptions(
            config.tag_ttl, config.max_stale, config.max_manifest_bytes, config.offline
        )
        bodies = ManifestBodies(store, index, accounting)
        if writeback is not None:
            bodies.on_upstream.append(writeback.manifest)
            stack.push_async_callback(writeback.close)
        resolutions: Resolutions = SingleFlight()
        fetches: Fetches = SingleFlight()
        stack.push_async_callback(resolutions.close)
        stack.push_async_callback(fetches.close)
        bucket = (shared, links, accounting) if shared is not None else None

        def manifests(owners: Cluster | None, counted: Accounting) -> ManifestService:
            """The manifests of one kind of caller: a client's ask the keys' owners
            (``owners``), a peer's never do."""
            chain = manifest_chain(
                bodies,
                config.max_manifest_bytes,
                offline=config.offline,
                cluster=owners,
                shared=bucket,
            )
            asks = None if owners is None else owners.asks_another
            tags = TagResolver(index, links, chain, options, resolutions, time.time, asks or never)
            return ManifestService(
                tags, chain, bodies, links, options, fetches, usage, counted, asks
            )

        room = budget.admits_fill
        swarms = None
        piece_size = parse_size(config.peer_piece_size, 0)
        if cluster is not None and config.peer_holders:
            swarms = SwarmNode(cluster, piece_size=piece_size)

        clients = Callers(
            BlobService(
                blob_chain(
                    store,
                    fills,
                    room,
                    cluster=cluster,
                    offline=config.offline,
                    links=links,
                    segments=config.upstream_segments,
                    shared=shared,
                    swarms=swarms,
                ),
                usage,
                accounting,
            ),
            manifests(cluster, accounting),
        )
        # A peer's request is answered here, never forwarded, and not in the ledger.
        peers = holdings = pieces = None
        if cluster is not None:
            peers = Callers(
                BlobService(
                    blob_chain(
                        store,
                        fills,
                        room,
                        for_peer=True,
                        offline=config.offline,
                        links=links,
                        segments=config.upstream_segments,
                        shared=shared,
                    ),
                    usage,
                    NullAccounting(),
                ),
                manifests(None, NullAccounting()),
            )
            pieces = BlobService(
                # A holder waits no longer than its asker: a slot kept for an asker
                # that gave up would turn the others away as busy.
                pieces_chain(store, fills, links, cluster.read_timeout),
                usage,
                NullAccounting(),
            )
            holdings = Holdings(cluster.self_url, fills, store, peers.blobs, links, piece_size)
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
            links=links,
            peers=peers,
            cluster=cluster,
            ledger=ledger,
            shared=shared,
            writeback=writeback,
            holdings=holdings,
            pieces=pieces,
            swarms=swarms,
        )
        if serving:
            assert keeper is not None and ledger is not None
            stack.push_async_callback(keeper.close)
            await keeper.start()
            runtime.keeper = keeper
            usage.start(index)
            await ledger.start()
            if writeback is not None:
                writeback.start()
        yield runtime


class _AfterFill:
    """What follows a fill's end here (``blobs.inflight.FillEvents``)."""

    def __init__(
        self,
        links: Links,
        shared: SharedTier | None,
        writeback: WriteBack | None,
        keeper: Keeper | None,
    ) -> None:
        self._links = links
        self._shared = shared
        self._writeback = writeback
        self._keeper = keeper

    async def committed(self, fill: Fill) -> None:
        try:
            # Fetched under the starter's repository: that upstream vouched for it.
            await self._links.add(fill.upstream, fill.repo, [str(fill.digest)])
        finally:
            # The rest waits for nothing, and follows a link that could not be written too.
            if self._shared is not None and fill.origin == "shared":
                # Read whole from the bucket and verified: a redirect may send clients there.
                self._shared.checked(fill.digest)
            if self._writeback is not None and fill.origin == "upstream":
                # Only what came from an upstream: a peer's or the bucket's bytes are
                # there already (or are the owner's to write).
                self._writeback.blob(fill.digest, fill.upstream, fill.repo)
            if self._keeper is not None:
                self._keeper.poke()  # a blob was added: the limit is checked soon

    def failed(self, fill: Fill) -> None:
        # The upstream's refusal of the pair is remembered for a while (links.py).
        if fill.error is not None:
            self._links.refuse(fill.upstream, fill.repo, str(fill.digest), fill.error)


def _upkeep(config: Config, limit: int | None) -> Upkeep:
    return Upkeep(
        rules=Rules(config.keep, config.expire_days, config.max_tags_per_repo),
        limit=limit,
        evict_interval=config.evict_interval,
        hot_window=config.hot_window,
        gc_interval=config.gc_interval,
    )
