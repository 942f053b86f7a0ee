"""The shared tier: the bucket many proxies share ([shared]), and this node's uploads
to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..accounting import Accounting
from ..config import Config
from ..shared.s3 import S3, redirect_signer
from ..shared.tier import SharedTier
from ..shared.writeback import WriteBack
from ..store.files import BlobStore
from ..upstream.pool import UpstreamPool


@asynccontextmanager
async def open_shared(config: Config, upstreams: UpstreamPool) -> AsyncIterator[SharedTier | None]:
    """The bucket when ``[shared]`` names one (offline: none, it is never dialled)."""
    if config.shared is None or config.offline:
        yield None
        return
    tier = SharedTier(
        S3(config.shared, upstreams.aws),
        config.shared,
        signer=redirect_signer(config.shared, upstreams.aws),
    )
    try:
        yield tier
    finally:
        await tier.close()


@asynccontextmanager
async def open_writeback(
    tier: SharedTier | None, store: BlobStore, accounting: Accounting
) -> AsyncIterator[WriteBack | None]:
    """The uploads of what this node fetched from an upstream (started by the caller
    once everything is built; closed before the bucket)."""
    if tier is None:
        yield None
        return
    writeback = WriteBack(tier, store, accounting)
    try:
        yield writeback
    finally:
        await writeback.close()
