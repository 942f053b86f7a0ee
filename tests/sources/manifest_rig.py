"""Each manifest source of the chain, built as the runtime builds it, over a real
upstream: the twin of :mod:`tests.sources.rig` for blobs.

A :class:`ManifestKind` names a source and writes down what the suite expects of it
where sources legitimately differ; :func:`open_manifest_subject` builds it for one
test: its own store and index, the upstream pool, for the owner kind a cluster whose
other node is a real proxy in peer mode (it owns the test's keys), for the bucket
kinds a bucket on moto's S3 server reached through a forwarder of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cacheproxy.accounting import NullAccounting, Origin
from cacheproxy.config import SharedConfig
from cacheproxy.layout import CacheLayout
from cacheproxy.links import Links
from cacheproxy.manifests.bodies import ManifestBodies
from cacheproxy.manifests.bucket import BucketManifests
from cacheproxy.manifests.cached import Nowhere
from cacheproxy.manifests.chains import manifest_chain
from cacheproxy.manifests.fetch import UpstreamManifests
from cacheproxy.manifests.owner import OwnerManifests
from cacheproxy.manifests.source import ManifestSource
from cacheproxy.oci import MANIFEST_TYPES, parse_digest
from cacheproxy.shared.s3 import S3
from cacheproxy.shared.tier import SharedTier
from cacheproxy.store.files import BlobStore
from cacheproxy.store.index import Index, TagKey
from cacheproxy.upstream.aws import AwsClients
from cacheproxy.upstream.client import Upstream
from cacheproxy.upstream.credentials import boto3_ecr_client
from cacheproxy.upstream.pool import UpstreamPool
from tests.sources.rig import _cluster, _config
from tests.support.forwarder import Forwarder
from tests.support.images import PushedImage
from tests.support.s3 import MotoS3, aws_environment

LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True)
class ManifestKind:
    """One manifest source, and what it answers where sources differ (and why)."""

    name: str
    #: What ``Found.origin`` reports: the ledger's word for where the bytes came from.
    origin: Origin
    #: Reaches outside this node (the upstream's faults reach it); the index does not.
    fetches: bool
    #: ``resolve`` names a tag. This node's index does not: what a tag names is the
    #: tag resolver's to cache (its freshness, stale-if-error), not a link's.
    resolves: bool
    #: Whether a resolution brings the manifest itself: "asked" (a GET when the body
    #: is wanted, else a HEAD, which Docker Hub does not count as a pull); "always"
    #: (the owner answers with the manifest, signed); "never" (the bucket link asks
    #: the upstream with HEAD: the bytes then come from the bucket by digest).
    brings: str


MANIFEST_KINDS = (
    # This node's index, offline: what an earlier pull through the chain kept.
    ManifestKind("cached", "cache", fetches=False, resolves=False, brings="never"),
    ManifestKind("upstream", "upstream", fetches=True, resolves=True, brings="asked"),
    # The key's owner, a real node: its signed answer (from its own upstream fetch).
    ManifestKind("owner", "peer", fetches=True, resolves=True, brings="always"),
    # The bucket holds the manifest; tags go on to the upstream (HEAD).
    ManifestKind("bucket", "shared", fetches=True, resolves=True, brings="never"),
    # The bucket lacks it: its 404 sends the request to the upstream.
    ManifestKind("bucket-miss", "upstream", fetches=True, resolves=True, brings="never"),
)


@dataclass
class ManifestSubject:
    """The source under test, and what to look at around it."""

    kind: ManifestKind
    source: ManifestSource
    up: Upstream
    image: PushedImage
    bodies: ManifestBodies
    #: The upstream's forwarder (faults and counts); the bucket's, for bucket kinds.
    wire: Forwarder
    bucket_wire: Forwarder | None = None
    #: Puts bytes (and a Content-Type) under the image manifest's key in the bucket
    #: (bucket kinds only).
    bucket_put: Callable[[bytes, str], Awaitable[None]] | None = None


@asynccontextmanager
async def open_manifest_subject(
    kind: ManifestKind, upstream: Forwarder, workdir: Path, image: PushedImage, moto: MotoS3
) -> AsyncIterator[ManifestSubject]:
    """The ``kind`` source over the upstream behind ``upstream`` (its own cache under
    ``workdir``); the bucket kinds' bucket is on ``moto``."""
    config = _config(upstream.url, workdir / "node")
    store = BlobStore(CacheLayout(config.cache_dir))
    await asyncio.to_thread(store.prepare)
    async with AsyncExitStack() as stack:
        index = await asyncio.to_thread(Index, CacheLayout(config.cache_dir).index)
        stack.push_async_callback(asyncio.to_thread, index.close)
        bodies = ManifestBodies(store, index, NullAccounting())
        upstreams = UpstreamPool(config)
        stack.push_async_callback(upstreams.close)
        up = upstreams.get()
        subject = ManifestSubject(kind, Nowhere("none"), up, image, bodies, upstream)
        if kind.name == "cached":
            # Brought in from the real registry by the online chain, as a pull would.
            await manifest_chain(bodies, LIMIT).by_digest(
                up, image.name, parse_digest(image.digest)
            )
            subject.source = manifest_chain(bodies, LIMIT, offline=True)
        elif kind.name == "upstream":
            subject.source = UpstreamManifests(LIMIT)
        elif kind.name == "owner":
            tag = TagKey(up.name, image.name, "v1", MANIFEST_TYPES).owner_key()
            _, cluster = await _cluster(stack, upstream.url, workdir, image.digest, tag)
            subject.source = OwnerManifests(cluster, LIMIT, Nowhere("not at the owner"))
        else:
            await _bucket(stack, subject, moto, workdir, holds=kind.name == "bucket")
        yield subject


async def _bucket(
    stack: AsyncExitStack, subject: ManifestSubject, moto: MotoS3, workdir: Path, holds: bool
) -> None:
    """A bucket of the test's own (holding the manifest if ``holds``), reached through
    a forwarder, and links in which the pair holds the digest (as the tag resolved
    there would have linked it)."""
    stack.enter_context(aws_environment())
    bucket = moto.new_bucket()
    wire = await stack.enter_async_context(Forwarder(moto.url))
    settings = SharedConfig(
        bucket, prefix="manifests", region="us-east-1", endpoint_url=wire.url,
        addressing_style="path",
    )  # fmt: skip
    aws = AwsClients(boto3_ecr_client)
    stack.callback(aws.close)
    tier = SharedTier(S3(settings, aws), settings)
    stack.push_async_callback(tier.close)
    image = subject.image
    key = tier.key(parse_digest(image.digest))
    client = moto.client()

    async def put(data: bytes, content_type: str = image.media_type) -> None:
        await asyncio.to_thread(
            client.put_object, Bucket=bucket, Key=key, Body=data, ContentType=content_type
        )

    if holds:
        await put(image.manifest)
    index = await asyncio.to_thread(Index, workdir / "links")
    stack.push_async_callback(asyncio.to_thread, index.close)
    links = Links(index)
    await links.add(subject.up.name, image.name, [image.digest])
    subject.source = BucketManifests(tier, links, NullAccounting(), LIMIT, UpstreamManifests(LIMIT))
    subject.bucket_wire, subject.bucket_put = wire, put
