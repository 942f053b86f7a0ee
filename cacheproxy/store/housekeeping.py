"""The server's background upkeep: eviction under the size limit, periodic gc, and
reconciling the index with the disk at start. One owner, tasks cancelled on close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..config import Config
from .access import AccessLog
from .blobs import BlobStore
from .index import Index
from .lifecycle import Plan, Rules, plan_eviction
from .maintenance import delete, gc, parse_size, read_state, reconcile

log = logging.getLogger(__name__)

# Eviction brings the cache down to this share of its limit, so that it does not
# run again after every fill.
LOW_WATER = 0.9


class Housekeeper:
    """Keeps the cache within its limit and its lifecycle rules."""

    def __init__(self, config: Config, store: BlobStore, index: Index, access: AccessLog) -> None:
        self._config = config
        self._store = store
        self._index = index
        self._access = access
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.evicted_blobs = 0
        self.evicted_bytes = 0
        self.lock = asyncio.Lock()

    def rules(self) -> Rules:
        c = self._config
        return Rules(c.keep, c.expire_days, c.max_tags_per_repo)

    def limit(self) -> int | None:
        if self._config.max_size is None:
            return None
        return parse_size(self._config.max_size, self._store.total_bytes())

    async def start(self) -> None:
        await asyncio.to_thread(reconcile, self._store, self._index)
        if self._config.max_size is not None:
            self._tasks.append(asyncio.create_task(self._evict_loop(), name="eviction"))
        if self._config.gc_interval > 0 and (
            self._config.expire_days is not None or self._config.max_tags_per_repo is not None
        ):
            self._tasks.append(asyncio.create_task(self._gc_loop(), name="lifecycle"))

    def poke(self) -> None:
        """A blob was added: check the size limit soon."""
        self._wake.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def evict_once(self) -> dict[str, int]:
        limit = self.limit()
        if limit is None:
            return {}
        async with self.lock:
            await self._access.flush(self._index)
            state = await asyncio.to_thread(read_state, self._store, self._index)
            victims = plan_eviction(
                state.snapshot,
                state.sizes,
                state.mtimes,
                state.refs,
                in_use=[d for d, n in self._access.in_use.items() if n > 0],
                keep=self._config.keep,
                limit=limit,
                target=int(limit * LOW_WATER),
                hot_since=time.time() - self._config.hot_window,
            )
            # A client may have started reading one since the plan was made.
            victims = {d: s for d, s in victims.items() if not self._access.in_use.get(d)}
            if victims:
                await asyncio.to_thread(delete, self._store, self._index, Plan(content=victims))
                self.evicted_blobs += len(victims)
                self.evicted_bytes += sum(victims.values())
                log.info(
                    "evicted %d blobs (%d bytes) to stay under %d bytes",
                    len(victims),
                    sum(victims.values()),
                    limit,
                )
            return victims

    async def gc_once(self, dry_run: bool = False) -> Plan:
        async with self.lock:
            await self._access.flush(self._index)
            return await asyncio.to_thread(gc, self._store, self._index, self.rules(), dry_run)

    async def _evict_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.evict_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.evict_once()
            except Exception:  # eviction must keep running; the next round retries
                log.exception("eviction failed")

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.gc_interval)
            try:
                await self.gc_once()
            except Exception:
                log.exception("lifecycle gc failed")
