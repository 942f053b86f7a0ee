"""The chains of manifest sources, link by link, in the order a request walks them
(the twin of ``blobs/chains.py``)::

    clients: this node's index -> [the owner] -> [shared tier] -> upstream
    peers:   this node's index ->                [shared tier] -> upstream
    offline: this node's index
"""

from __future__ import annotations

from ..accounting import Accounting
from ..links import Links
from ..peers.cluster import Cluster
from ..shared.tier import SharedTier
from .bodies import ManifestBodies
from .bucket import BucketManifests
from .cached import CachedManifests, Nowhere
from .fetch import UpstreamManifests
from .owner import OwnerManifests
from .source import ManifestSource


def manifest_chain(
    bodies: ManifestBodies,
    limit: int,
    *,
    offline: bool = False,
    cluster: Cluster | None = None,
    shared: tuple[SharedTier, Links, Accounting] | None = None,
) -> ManifestSource:
    """The chain one kind of caller walks. ``cluster``: ask the key's owner before the
    upstream (a client's request in cluster mode; a peer's request never asks a peer,
    so requests never loop). ``shared``: the bucket, read under the links rule.
    ``limit``: the largest manifest any link reads."""
    if offline:
        return CachedManifests(bodies, Nowhere("not in the cache, and the proxy is offline"))
    remote: ManifestSource = UpstreamManifests(limit)
    if shared is not None:
        tier, links, accounting = shared
        remote = BucketManifests(tier, links, accounting, limit, remote)
    if cluster is not None:
        remote = OwnerManifests(cluster, limit, remote)
    return CachedManifests(bodies, remote)
