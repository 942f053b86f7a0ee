"""The services one kind of caller gets (clients, or the cluster's other nodes): its
chain of blob sources and its chain of manifest sources, each composed in the order
a request walks it (``blobs/chains.py``, ``manifests/chains.py``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from ..accounting import Accounting, NullAccounting
from ..blobs.chains import blob_chain
from ..blobs.inflight import Fills
from ..blobs.service import BlobService
from ..blobs.source import BlobSource, Swarms
from ..config import Config
from ..links import Links
from ..manifests.bodies import ManifestBodies
from ..manifests.chains import manifest_chain
from ..manifests.referrers import Referrers, ReferrersOptions, Revalidations
from ..manifests.service import Fetches, ManifestCheck, ManifestService
from ..manifests.tags import ManifestOptions, Resolutions, TagResolver, TagStats, never
from ..peers.cluster import Cluster
from ..policy.engine import Policies
from ..policy.signatures import SignatureFinder
from ..shared.tier import SharedTier
from ..singleflight import SingleFlight
from .caching import freshness_rules
from .storage import Storage


@dataclass(frozen=True)
class Callers:
    """The services one kind of caller gets."""

    blobs: BlobService
    manifests: ManifestService
    referrers: Referrers
    #: The signature policy these callers are held to ([[policy]]), if any.
    policy: Policies | None = None


class Services:
    """Builds each kind of caller's services over one node's parts; the manifests'
    single flights are shared by all of them (closed on exit of :func:`open_services`)."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        fills: Fills,
        links: Links,
        accounting: Accounting,
        shared: SharedTier | None,
    ) -> None:
        self._config = config
        self._storage = storage
        self._fills = fills
        self._links = links
        self._accounting = accounting
        self._shared = shared
        self.bodies = ManifestBodies(storage.store, storage.index, accounting)
        self.options = ManifestOptions(
            config.tag_ttl, config.max_stale, config.max_manifest_bytes, config.offline
        )
        self.resolutions: Resolutions = SingleFlight()
        self.fetches: Fetches = SingleFlight()
        self.revalidations: Revalidations = SingleFlight()
        self.rules = freshness_rules(config)
        #: Tags served stale, by reason, whoever asked (/metrics).
        self.tag_stats = TagStats()
        #: The signature policies built (closed on exit of :func:`open_services`).
        self.policies: list[Policies] = []

    def clients(
        self, cluster: Cluster | None, swarms: Swarms | None, *, policed: bool = False
    ) -> Callers:
        """A client's: the ledger counts it; in a cluster it asks the keys' owners.
        ``policed``: held to the [[policy]] tables (a server's clients; a command's
        own reads, an operator's prefetch or export, are not)."""
        policy = self._policy(cluster, swarms) if policed and self._config.policies else None
        blobs = self._blobs(cluster=cluster, swarms=swarms)
        usage, counted = self._storage.usage, self._accounting
        check = policy.check_manifest if policy is not None else None
        manifests = self._manifests(cluster, counted, check)
        blob_check = policy.check_blob if policy is not None else None
        return Callers(BlobService(blobs, usage, counted, blob_check), manifests,
                       self._referrers(manifests), policy)  # fmt: skip

    def _policy(self, cluster: Cluster | None, swarms: Swarms | None) -> Policies:
        """The policy, and what it reads signatures through: services like a client's
        (asking the cluster, under the links rule) that count nothing in the ledger
        and are not policed themselves (raises ConfigError for a key it cannot read)."""
        uncounted = NullAccounting()
        lookups = self._manifests(cluster, uncounted)
        chain = self._blobs(cluster=cluster, swarms=swarms, redirect=False)
        finder = SignatureFinder(
            lookups, self._referrers(lookups), BlobService(chain, self._storage.usage, uncounted)
        )
        config = self._config
        policy = Policies(
            config.policies, self._storage.index, finder, lookups, config.referrers_ttl
        )
        self.policies.append(policy)
        return policy

    def peers(self) -> Callers:
        """A peer node's: answered here, never forwarded, and not in the ledger."""
        counted = NullAccounting()
        blobs = self._blobs(for_peer=True)
        manifests = self._manifests(None, counted)
        return Callers(BlobService(blobs, self._storage.usage, counted), manifests,
                       self._referrers(manifests))  # fmt: skip

    def _blobs(
        self,
        *,
        cluster: Cluster | None = None,
        swarms: Swarms | None = None,
        for_peer: bool = False,
        redirect: bool = True,
    ) -> BlobSource:
        config = self._config
        return blob_chain(
            self._storage.store,
            self._fills,
            self._fills.budget.admits_fill,
            cluster=cluster,
            for_peer=for_peer,
            offline=config.offline,
            links=self._links,
            segments=config.upstream_segments,
            shared=self._shared,
            swarms=swarms,
            redirect=redirect,
        )

    def _referrers(self, manifests: ManifestService) -> Referrers:
        config = self._config
        options = ReferrersOptions(
            config.referrers_ttl, config.max_stale, config.max_manifest_bytes, config.offline
        )
        return Referrers(
            self._storage.index, manifests, self._links, options, self.revalidations, time.time
        )

    def _manifests(
        self, owners: Cluster | None, counted: Accounting, check: ManifestCheck | None = None
    ) -> ManifestService:
        """``owners``: a client's request asks the keys' owners; a peer's never does."""
        config, storage, links = self._config, self._storage, self._links
        bucket = (self._shared, links, self._accounting) if self._shared is not None else None
        chain = manifest_chain(
            self.bodies,
            config.max_manifest_bytes,
            offline=config.offline,
            cluster=owners,
            shared=bucket,
        )
        asks = None if owners is None else owners.asks_another
        tags = TagResolver(
            storage.index,
            links,
            chain,
            self.options,
            self.resolutions,
            time.time,
            asks or never,
            self.rules,
            self.tag_stats,
        )
        return ManifestService(
            tags, chain, self.bodies, links, self.options, self.fetches, storage.usage, counted,
            asks, check,
        )  # fmt: skip


@asynccontextmanager
async def open_services(
    config: Config,
    storage: Storage,
    fills: Fills,
    links: Links,
    accounting: Accounting,
    shared: SharedTier | None,
) -> AsyncIterator[Services]:
    services = Services(config, storage, fills, links, accounting, shared)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(services.fetches.close)
        stack.push_async_callback(services.resolutions.close)
        stack.push_async_callback(services.revalidations.close)
        stack.push_async_callback(_close_policies, services)
        yield services


async def _close_policies(services: Services) -> None:
    for policy in services.policies:
        await policy.close()
