"""The cache on disk: its lock, its blob store, the index and what is used of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from ..config import Config
from ..layout import CacheLayout
from ..store.files import BlobStore
from ..store.index import Index
from ..store.lock import CacheLock
from ..store.readiness import Readiness
from ..store.usage import UsageLog


@dataclass(frozen=True)
class Storage:
    """The cache directory's parts."""

    layout: CacheLayout
    store: BlobStore
    index: Index
    usage: UsageLog
    readiness: Readiness


@asynccontextmanager
async def open_storage(config: Config, *, writes: bool) -> AsyncIterator[Storage]:
    """The cache under ``config.cache_dir``. ``writes``: hold the directory's lock
    throughout (or raise CacheBusy at once when another process holds it) and remove
    what a crash left in its temp directory; a reader leaves both alone."""
    layout = CacheLayout(config.cache_dir)
    store = BlobStore(layout)
    async with AsyncExitStack() as stack:
        if writes:
            lock = await asyncio.to_thread(CacheLock.take, layout.root, layout.lock)
            # Released last: nothing may change the cache after it is let go.
            stack.callback(lock.release)
        await asyncio.to_thread(store.prepare, writes)
        index = await asyncio.to_thread(Index, layout.index)
        stack.push_async_callback(asyncio.to_thread, index.close)
        usage = UsageLog()
        stack.push_async_callback(usage.close, index)
        yield Storage(layout, store, index, usage, Readiness(store, index))
