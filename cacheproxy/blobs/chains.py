"""The chains of blob sources, link by link, in the order a request walks them
(the diagram is in ``cacheproxy/runtime/__init__.py``; runtime/services.py builds one
of each kind)."""

from __future__ import annotations

from collections.abc import Callable

from ..links import Links
from ..peers.cluster import Cluster
from ..shared.tier import SharedTier
from ..store.files import BlobStore
from .inflight import Fills, Held, InFlight
from .local import LocalStore, Nowhere
from .peers import PeerSource
from .redirect import Redirect
from .shared import SharedSource
from .source import BlobSource, Remote, Swarms, Want
from .upstream import UpstreamSource
from .vouched import Vouched


def blob_chain(
    store: BlobStore,
    fills: Fills,
    room: Callable[[], bool],
    *,
    cluster: Cluster | None = None,
    for_peer: bool = False,
    offline: bool = False,
    links: Links | None = None,
    segments: int = 1,
    shared: SharedTier | None = None,
    swarms: Swarms | None = None,
    redirect: bool = True,
) -> BlobSource:
    """The chain of blob sources one kind of caller walks (see the module docstring).

    ``cluster``: ask the cluster's other nodes before the upstream (a client's
    request in peer mode). ``for_peer``: the chain that answers another node, which
    never asks a peer. ``room``: whether the disk may take a miss; when it says no,
    the fills step aside and the blob streams through uncached. ``links``: serve a
    digest under a repository only by the links rule (every serving chain has it;
    the sources alone, without it, are what the conformance suite checks).
    ``segments``: connections one blob may be fetched on from the upstream at once.
    ``shared``: the bucket between peers and the upstream (it needs ``links``: the
    bucket's copy is served under a repository only by the links rule).
    ``swarms``: a fill fed by peers takes pieces from every node holding the blob
    (the owner's list), not from the owner alone. ``redirect``: False for a chain
    whose bytes this node reads itself (the signature policy's), never a 307.
    """
    chain: BlobSource
    if offline:
        chain = LocalStore(store, Nowhere("not in the cache, and the proxy is offline"))
    else:
        remote: Remote = UpstreamSource(lanes=segments)
        if shared is not None:
            if links is None:
                raise ValueError("the shared tier is read only under the links rule")
            remote = SharedSource(shared, links, remote, fills.accounting)
        if cluster is not None and not for_peer:
            remote = PeerSource(cluster, remote, swarms)
        # A peer's request never joins a fill fed through peers: two nodes with
        # different views of membership could otherwise wait on each other. A peer
        # verifies the whole blob itself: it is sent every byte as it lands.
        chain = LocalStore(
            store, InFlight(fills, remote, room, join_peer_fed=not for_peer, hold=not for_peer)
        )
        if shared is not None and shared.settings.redirect and redirect and not for_peer:
            assert links is not None
            # After the links rule (the Vouched link wraps it below), never before.
            chain = Redirect(shared, links, chain, fills.accounting)
    if links is None:
        return chain
    # An unlinked pair is confirmed first, whether this node (or the cluster) holds
    # the digest or not, wherever the fetch that would otherwise follow tells the two
    # apart: in a cluster it asks a peer before the upstream (and /metrics there
    # would move), and under pressure it waits for a fill slot or is refused one (a
    # client at its bound would be told 429 for a digest not held, 404 for one held).
    # So a refused pair costs and answers the same (one HEAD) whatever is held
    # (links.py). Otherwise the fetch itself asks the upstream under the pair, whose
    # GET answers as a HEAD would. Never for a pull's own blobs, which the manifest it
    # just pulled named (a hint: the serving node still applies the whole rule, and
    # a registry refuses a manifest whose layers it lacks).
    rule, gate = links, fills.gate

    def held(want: Want) -> bool:
        named = rule.hinted(want.upstream.name, want.repo, str(want.digest))
        pressed = cluster is not None or not gate.admits_at_once(want.requester)
        if not for_peer and not named and pressed:
            return True
        # A fill under the same pair is the fetch that vouches for it: not "held".
        return store.exists(want.digest) or fills.held_elsewhere(want)

    return Vouched(links, held, chain)


def pieces_chain(store: BlobStore, fills: Fills, links: Links, idle: float) -> BlobSource:
    """The chain that answers a peer's request for a piece: what this node holds,
    complete or landing (any fill, one fed by peers too), under the links rule; it
    never starts a fetch. Two nodes never wait on each other for long: a range that
    does not land within ``idle`` seconds is given up, and the asker asks elsewhere."""

    def held(want: Want) -> bool:
        # As for any chain: a fill under the same pair is the fetch that vouches for it.
        return store.exists(want.digest) or fills.held_elsewhere(want)

    return Vouched(links, held, LocalStore(store, Held(fills, idle)))
