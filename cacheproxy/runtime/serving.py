"""The server's runtime: a command's parts, and what only a server runs: the ledger,
the keeper (eviction, lifecycle), the uploads to the shared tier, the cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from ..blobs.disk import DiskBudget
from ..config import Config
from ..lifecycle.keeper import Keeper, Upkeep
from ..lifecycle.plan import Rules
from ..manifests.listing import TagLister
from ..savings.ledger import Ledger
from ..shared.writeback import WriteBack
from . import Runtime
from .caching import FollowUps, disk_budget, open_fills, open_links, size_limit
from .cluster import ClusterParts, cluster_parts, open_cluster, swarms_of
from .services import open_services
from .shared import open_shared, open_writeback
from .storage import Storage, open_storage
from .upstreams import open_upstreams


@dataclass(frozen=True)
class ServingRuntime(Runtime):
    """A running server's parts."""

    ledger: Ledger
    keeper: Keeper
    #: This node's uploads to the shared tier (with ``[shared]``).
    writeback: WriteBack | None
    #: This node's part in its cluster (in peer mode).
    cluster: ClusterParts | None


@asynccontextmanager
async def open_ledger(config: Config, storage: Storage) -> AsyncIterator[Ledger]:
    ledger = Ledger(storage.layout.ledger, flush_interval=config.savings_flush_interval)
    try:
        yield ledger
    finally:
        await ledger.close()


@asynccontextmanager
async def open_keeper(
    config: Config, storage: Storage, budget: DiskBudget
) -> AsyncIterator[Keeper]:
    """The keeper of the cache's size and lifecycle (started by the caller)."""
    upkeep = Upkeep(
        rules=Rules(config.keep, config.expire_days, config.max_tags_per_repo),
        limit=size_limit(config, storage),
        evict_interval=config.evict_interval,
        hot_window=config.hot_window,
        gc_interval=config.gc_interval,
    )
    keeper = Keeper(upkeep, storage.store, storage.index, storage.usage, budget)
    try:
        yield keeper
    finally:
        await keeper.close()


@asynccontextmanager
async def open_serving(
    config: Config, *, upstream_clock: Callable[[], float] | None = None
) -> AsyncIterator[ServingRuntime]:
    """The server's runtime, its background work started. ``upstream_clock``: the
    upstream clients' monotonic clock (token lifetimes, retry budgets), for a test
    that moves time itself. Everything is closed in the reverse order on exit: the
    keeper first, the ledger after all that may still count, the cache's lock last."""
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        storage = await enter(open_storage(config, writes=True))
        ledger = await enter(open_ledger(config, storage))
        upstreams = await enter(open_upstreams(config, check=True, clock=upstream_clock))
        cluster = await enter(open_cluster(config))
        shared = await enter(open_shared(config, upstreams))
        links = await enter(open_links(config, storage))
        writeback = await enter(open_writeback(shared, storage.store, ledger))
        budget = disk_budget(config, storage)
        keeper = await enter(open_keeper(config, storage, budget))
        follow_ups = FollowUps(links, shared, writeback, keeper)
        fills = await enter(open_fills(config, storage, ledger, budget, follow_ups))
        services = await enter(open_services(config, storage, fills, links, ledger, shared))
        if writeback is not None:
            services.bodies.on_upstream.append(writeback.manifest)
        swarms = swarms_of(config, cluster)
        part = None
        if cluster is not None:
            part = cluster_parts(config, cluster, swarms, storage, fills, links, services)
        clients = services.clients(cluster, swarms, policed=True)
        runtime = ServingRuntime(
            config, storage, upstreams, links, fills, clients,
            TagLister(config.max_manifest_bytes), services.tag_stats, shared, ledger, keeper,
            writeback, part,
        )  # fmt: skip
        await _start(runtime)
        yield runtime


async def _start(runtime: ServingRuntime) -> None:
    """What runs in the background, once every part is built."""
    await runtime.keeper.start()
    runtime.storage.usage.start(runtime.storage.index)
    await runtime.ledger.start()
    if runtime.writeback is not None:
        runtime.writeback.start()
