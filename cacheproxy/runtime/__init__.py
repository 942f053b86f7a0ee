"""The composition root: every part of a proxy, built from one Config, one builder
per subsystem (storage.py, upstreams.py, shared.py, caching.py, services.py,
cluster.py), each a small async context manager that closes what it opened.

A command opens a :class:`Runtime` (:func:`open_runtime`); the server a
:class:`~cacheproxy.runtime.serving.ServingRuntime`, which adds the ledger, the
keeper, the uploads to the shared tier and the cluster (``serving.py``). Nothing
else wires parts together. The chains of blob sources, in the order a request walks
them (the links: ``blobs/chains.py``; the manifests' twin: ``manifests/chains.py``)::

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

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from ..accounting import NullAccounting
from ..blobs.inflight import Fills
from ..config import Config
from ..layout import CacheLayout
from ..links import Links
from ..manifests.listing import TagLister
from ..manifests.tags import TagStats
from ..shared.tier import SharedTier
from ..store.files import BlobStore
from ..store.index import Index
from ..upstream.pool import UpstreamPool
from .caching import FollowUps, disk_budget, open_fills, open_links
from .services import Callers, open_services
from .shared import open_shared
from .storage import Storage, open_storage
from .upstreams import open_upstreams


@dataclass(frozen=True)
class Runtime:
    """A proxy's parts as a command uses them."""

    config: Config
    storage: Storage
    upstreams: UpstreamPool
    links: Links
    fills: Fills
    clients: Callers
    tag_lists: TagLister
    #: Tags served stale, by the reason, whoever asked.
    tag_stats: TagStats
    #: The shared tier's bucket when ``[shared]`` names one.
    shared: SharedTier | None

    @property
    def layout(self) -> CacheLayout:
        return self.storage.layout

    @property
    def store(self) -> BlobStore:
        return self.storage.store

    @property
    def index(self) -> Index:
        return self.storage.index


@asynccontextmanager
async def open_runtime(config: Config, *, writes: bool = True) -> AsyncIterator[Runtime]:
    """A command's runtime: nothing runs in the background and nothing is counted in
    the ledger. ``writes``: the command writes blobs or removes temp files, so it
    holds the cache directory's lock throughout (or raises CacheBusy at once when
    another process, a server, holds it); a command that only reads leaves temp
    files alone and runs beside a server."""
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        storage = await enter(open_storage(config, writes=writes))
        upstreams = await enter(open_upstreams(config))
        # Closed after the fills, which may be reading from it.
        shared = await enter(open_shared(config, upstreams))
        links = await enter(open_links(config, storage))
        accounting = NullAccounting()
        budget = disk_budget(config, storage)
        follow_ups = FollowUps(links, shared)
        fills = await enter(open_fills(config, storage, accounting, budget, follow_ups))
        services = await enter(open_services(config, storage, fills, links, accounting, shared))
        clients = services.clients(None, None)
        tag_lists = TagLister(config.max_manifest_bytes)
        yield Runtime(
            config, storage, upstreams, links, fills, clients, tag_lists, services.tag_stats,
            shared,
        )  # fmt: skip
