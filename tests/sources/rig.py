"""Each blob source of the chain, built as the runtime builds it, over a real upstream.

A :class:`Kind` names a source and writes down what the suite expects of it where
sources legitimately differ; :func:`open_subject` builds that source for one test:
its own store and fills, the upstream pool, and for the peer kinds a cluster whose
other node is a real proxy in peer mode, signed with a shared secret; for the shared
kinds a bucket on moto's S3 server, reached through a forwarder of its own (the
wire whose faults reach that source).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cacheproxy.accounting import Origin
from cacheproxy.blobs.chains import blob_chain
from cacheproxy.blobs.inflight import Fills
from cacheproxy.blobs.peers import PeerSource
from cacheproxy.blobs.source import BlobSource, Want
from cacheproxy.blobs.upstream import UpstreamSource
from cacheproxy.config import Config, SharedConfig, load_config
from cacheproxy.layout import CacheLayout
from cacheproxy.links import Links
from cacheproxy.oci import parse_digest
from cacheproxy.peers.cluster import Cluster, start_cluster
from cacheproxy.peers.ring import ranked
from cacheproxy.shared.s3 import S3
from cacheproxy.shared.tier import SharedTier
from cacheproxy.store.files import BlobStore
from cacheproxy.store.index import Index
from cacheproxy.swarm.node import SwarmNode
from cacheproxy.upstream.aws import AwsClients
from cacheproxy.upstream.credentials import boto3_ecr_client
from cacheproxy.upstream.pool import UpstreamPool
from tests.support.forwarder import Forwarder
from tests.support.ports import free_port
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.s3 import MotoS3, aws_environment
from tests.support.sink import send_all

SECRET = b"conformance-suite-cluster-secret-0123"


@dataclass(frozen=True)
class Kind:
    """One blob source, and what it answers where sources differ (with the reason)."""

    name: str
    #: What ``Body.origin`` reports: the ledger's word for where the bytes came from.
    origin: Origin
    #: A whole read leaves the blob, verified, in this node's store.
    keeps: bool
    #: Reaches outside this node (so the upstream's faults reach it); the disk does not.
    fetches: bool
    #: A body that breaks off upstream is resumed: the bytes still come out exact. A
    #: relay cannot resume on its own (it has no file to continue), so it raises.
    resumes: bool
    #: ``open(want, first)`` asks its feed for the bytes from ``first``: a range past
    #: the end fails in ``open`` with the upstream's 416. The others open the whole
    #: blob and the range is planned against its size.
    asks_for_ranges: bool
    #: The last byte of a range waits until the whole blob is verified. A relay
    #: cannot verify a part of a blob on its own (the client checks the whole it
    #: assembles), so a wrong byte inside a range passes through it.
    verifies_ranges: bool


#: The shared tier's objects live under this prefix in the suite's buckets.
SHARED_PREFIX = "conformance"

KINDS = (
    Kind("disk", "cache", keeps=True, fetches=False, resumes=True, asks_for_ranges=False,
         verifies_ranges=True),
    Kind("fill", "upstream", keeps=True, fetches=True, resumes=True, asks_for_ranges=False,
         verifies_ranges=True),
    # The peer relays its answer; the peer's own fill resumes and verifies the blob,
    # and sends every byte as it lands (the relay verifies a whole blob as it passes).
    Kind("peer", "peer", keeps=False, fetches=True, resumes=True, asks_for_ranges=True,
         verifies_ranges=False),
    # The fill takes the blob from its owner alone (the chain without a swarm).
    Kind("peer-fill", "peer", keeps=True, fetches=True, resumes=True, asks_for_ranges=False,
         verifies_ranges=True),
    # The fill joins the blob's swarm: the owner's holder list, pieces from the owner's
    # pieces endpoint (the only holder here), verified whole like any fill.
    Kind("peer-swarm", "peer", keeps=True, fetches=True, resumes=True, asks_for_ranges=False,
         verifies_ranges=True),
    Kind("upstream", "upstream", keeps=False, fetches=True, resumes=False, asks_for_ranges=True,
         verifies_ranges=False),
    Kind("stream-through", "upstream", keeps=False, fetches=True, resumes=False,
         asks_for_ranges=True, verifies_ranges=False),
    # The bucket holds the blob: the fill is fed by ranged GETs from it, resumed from
    # it, verified like any other (a wrong object is deleted and never kept).
    Kind("shared", "shared", keeps=True, fetches=True, resumes=True, asks_for_ranges=False,
         verifies_ranges=True),
    # The bucket lacks it: its GET's 404 sends the fill to the upstream.
    Kind("shared-miss", "upstream", keeps=True, fetches=True, resumes=True,
         asks_for_ranges=False, verifies_ranges=True),
)  # fmt: skip


@dataclass(frozen=True)
class PushedBlob:
    """A blob as pushed to the upstream registry."""

    repo: str
    digest: str
    data: bytes


@dataclass
class Subject:
    """The source under test, and what to look at around it."""

    kind: Kind
    source: BlobSource
    want: Want
    store: BlobStore
    #: The wire this source's bytes cross (the upstream's forwarder, or the bucket's),
    #: and the part of a request's path that names the blob on it.
    wire: Forwarder
    path: str
    #: The cluster's other node (peer kinds only).
    peer: RunningProxy | None = None

    def kept(self) -> bool:
        """The blob is complete in this node's store."""
        return self.store.exists(self.want.digest)

    async def temp_files(self) -> list[Path]:
        """Unfinished downloads left here or on the peer, once the peer's own fills
        have ended: a peer is sent a blob as it lands, before the node sending it has
        verified and kept its own copy (the peer verifies the whole blob itself)."""
        if self.peer is not None:
            await self.peer.idle()
        found = list(self.store.tmp_dir.iterdir())
        if self.peer is not None:
            found += self.peer.temp_files()
        return found


def _room() -> bool:
    return True


def _no_room() -> bool:
    return False


@asynccontextmanager
async def open_subject(
    kind: Kind, upstream: Forwarder, workdir: Path, blob: PushedBlob, moto: MotoS3
) -> AsyncIterator[Subject]:
    """The ``kind`` source over the upstream behind ``upstream``, caching (if at all)
    under ``workdir``; the shared kinds' bucket is on ``moto``."""
    upstream_url = upstream.url
    config = _config(upstream_url, workdir / "node")
    store = BlobStore(CacheLayout(config.cache_dir))
    await asyncio.to_thread(store.prepare)
    wire, path = upstream, f"/blobs/{blob.digest}"
    async with AsyncExitStack() as stack:
        upstreams = UpstreamPool(config)
        stack.push_async_callback(upstreams.close)
        want = Want(upstreams.get(), blob.repo, parse_digest(blob.digest))
        peer = cluster = shared = None
        if kind.name.startswith("peer"):
            peer, cluster = await _cluster(stack, upstream_url, workdir, blob.digest)
        links = None
        if kind.name.startswith("shared"):
            shared, links, bucket_wire = await _bucket(stack, moto, workdir, want, blob, kind)
            if kind.name == "shared":
                wire, path = bucket_wire, shared.key(want.digest)
        fills = Fills(store)
        # Closed first: a fill still running stops before the clients it uses.
        stack.push_async_callback(fills.close)
        if shared is not None:
            source = blob_chain(store, fills, _room, links=links, shared=shared)
        else:
            source = _source(kind.name, store, fills, cluster)
        if kind.name == "disk":
            # Brought in from the real registry by the fill chain, as a client's pull
            # would, not written by hand.
            body = await blob_chain(store, fills, _room).open(want)
            try:
                await send_all(body)
            finally:
                body.close()
            assert store.exists(want.digest)
        yield Subject(kind, source, want, store, wire, path, peer)


def _source(name: str, store: BlobStore, fills: Fills, cluster: Cluster | None) -> BlobSource:
    builders: dict[str, Callable[[], BlobSource]] = {
        # The offline chain: the local store and nothing behind it.
        "disk": lambda: blob_chain(store, fills, _room, offline=True),
        "fill": lambda: blob_chain(store, fills, _room),
        "peer": lambda: PeerSource(_required(cluster), UpstreamSource()),
        "peer-fill": lambda: blob_chain(store, fills, _room, cluster=_required(cluster)),
        "peer-swarm": lambda: blob_chain(
            store, fills, _room, cluster=_required(cluster), swarms=SwarmNode(_required(cluster))
        ),
        "upstream": UpstreamSource,
        # The fills step aside (no room on disk): the next link relays.
        "stream-through": lambda: blob_chain(store, fills, _no_room),
    }
    return builders[name]()


def _required(cluster: Cluster | None) -> Cluster:
    assert cluster is not None
    return cluster


def _config(upstream_url: str, cache_dir: Path, **settings: object) -> Config:
    # No environment: the suite's settings are these, whatever the shell exports.
    flags = {"upstream": upstream_url, "cache_dir": cache_dir, **settings}
    return load_config(env={}, flags=flags)


async def _cluster(
    stack: AsyncExitStack, upstream_url: str, workdir: Path, digest: str, *more: str
) -> tuple[RunningProxy, Cluster]:
    """A real second node, and this node's cluster in which it owns ``digest`` (and
    the ``more`` keys)."""
    secret = workdir / "peer-secret"
    secret.write_bytes(SECRET + b"\n")
    port, self_url = _owned_by_peer(digest, *more)
    peer_url = f"http://127.0.0.1:{port}"
    peer = await stack.enter_async_context(
        running_proxy(
            upstream_url,
            workdir / "peer",
            port=port,
            peers=(peer_url,),
            self_url=peer_url,
            peer_secret_file=secret,
        )
    )
    config = _config(
        upstream_url,
        workdir / "node",
        peers=(peer_url, self_url),
        self_url=self_url,
        peer_secret_file=secret,
    )
    cluster = await start_cluster(config)
    assert cluster is not None
    stack.push_async_callback(cluster.close)
    for key in (digest, *more):
        assert cluster.candidates(key) == [peer_url]
    return peer, cluster


async def _bucket(
    stack: AsyncExitStack, moto: MotoS3, workdir: Path, want: Want, blob: PushedBlob, kind: Kind
) -> tuple[SharedTier, Links, Forwarder]:
    """A bucket of this test's own (holding the blob for the "shared" kind), the tier
    reaching it through a forwarder, and links in which the request's pair is linked
    (as a pull of the repository's manifest would have linked it)."""
    stack.enter_context(aws_environment())
    bucket = moto.new_bucket()
    wire = await stack.enter_async_context(Forwarder(moto.url))
    settings = SharedConfig(
        bucket, prefix=SHARED_PREFIX, region="us-east-1", endpoint_url=wire.url,
        addressing_style="path",
    )  # fmt: skip
    aws = AwsClients(boto3_ecr_client)
    stack.callback(aws.close)
    tier = SharedTier(S3(settings, aws), settings)
    stack.push_async_callback(tier.close)
    if kind.name == "shared":
        client = moto.client()
        key = tier.key(want.digest)
        await asyncio.to_thread(client.put_object, Bucket=bucket, Key=key, Body=blob.data)
    index = await asyncio.to_thread(Index, workdir / "index")
    stack.push_async_callback(asyncio.to_thread, index.close)
    links = Links(index)
    await links.add(want.upstream.name, want.repo, [blob.digest])
    return tier, links, wire


def _owned_by_peer(*keys: str) -> tuple[int, str]:
    """A port for the peer, and a URL for this node (which only asks, never listens),
    such that the ring ranks the peer first for every one of ``keys``: the owner it
    asks."""
    # Each try is a new pair, so each has an even chance, whatever the last one scored.
    for attempt in range(1, 257):
        port, self_url = free_port(), f"http://127.0.0.2:{attempt}"
        members = [f"http://127.0.0.1:{port}", self_url]
        if all(ranked(key, members)[0] != self_url for key in keys):
            return port, self_url
    raise AssertionError("no pair of URLs puts the peer first")
