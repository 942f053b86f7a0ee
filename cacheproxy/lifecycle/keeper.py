"""The server's background upkeep: eviction under the size limit and to keep
``min_free`` free on the disk, periodic gc, and reconciling the index with the disk
at start. One owner, tasks cancelled on close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from ..blobs.disk import DiskBudget
from ..sizes import DiskSpace
from ..store.files import BlobStore
from ..store.index import Index
from ..store.usage import UsageLog
from .apply import delete, gc, read_state, reconcile
from .plan import Plan, Rules, plan_eviction

log = logging.getLogger(__name__)

# Eviction brings the cache down to this share of its limit, so that it does not
# run again after every fill.
LOW_WATER = 0.9
# Eviction for free space frees this share of the file system beyond min_free, for
# the same reason.
FREE_SLACK = 0.01


@dataclass(frozen=True)
class Upkeep:
    """What the keeper keeps to: the size limit (bytes, resolved) and the rules."""

    rules: Rules = field(default_factory=Rules)
    # Bytes the cache may hold (None: no limit).
    limit: int | None = None
    # Seconds between eviction checks (also run after a fill completes).
    evict_interval: float = 30.0
    # Content reachable from manifests used within this many seconds goes last.
    hot_window: float = 24 * 3600.0
    # Seconds between lifecycle runs (0: never).
    gc_interval: float = 3600.0


class Keeper:
    """Keeps the cache within its limit and its lifecycle rules."""

    def __init__(
        self,
        upkeep: Upkeep,
        store: BlobStore,
        index: Index,
        usage: UsageLog,
        budget: DiskBudget | None = None,
    ) -> None:
        self._upkeep = upkeep
        # Bytes running fills announced count against the limit already, and the
        # disk's min_free: what the cache gives back when other files fill the disk.
        self._budget = budget or DiskBudget(upkeep.limit, (), store.disk_space)
        self._store = store
        self._index = index
        self._usage = usage
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.evicted_blobs = 0
        self.evicted_bytes = 0
        #: What the last eviction check saw (for /metrics): the disk, and the bytes
        #: the cache held (known only where a size limit makes it count them).
        self.last_space: DiskSpace | None = None
        self.cache_bytes: int | None = None
        self.lock = asyncio.Lock()

    @property
    def limit(self) -> int | None:
        """The bytes the cache may hold (max_size), None without a limit."""
        return self._upkeep.limit

    def min_free(self, total: int) -> int:
        """The bytes min_free keeps free on a disk of ``total`` bytes."""
        return self._budget.min_free(total)

    async def start(self) -> None:
        await asyncio.to_thread(reconcile, self._store, self._index)
        self.last_space = await asyncio.to_thread(self._budget.space)
        # Always: min_free is kept whether the cache has a size limit or not.
        self._tasks.append(asyncio.create_task(self._evict_loop(), name="eviction"))
        rules = self._upkeep.rules
        if self._upkeep.gc_interval > 0 and (
            rules.expire_days is not None or rules.max_tags_per_repo is not None
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
        """Evict least recently used blobs while the cache is over its limit or the
        disk has less than ``min_free`` free (the kubelet evicts pods below its own
        thresholds: the cache gives the space back first)."""
        limit = self._upkeep.limit
        async with self.lock:
            # Read under the lock: a run that waited for another must see the space
            # that run freed, or both would evict for the same shortfall.
            space = self.last_space = await asyncio.to_thread(self._budget.space)
            short = self._budget.shortfall(space)
            if limit is None and not short:
                return {}
            await self._usage.flush(self._index)
            state = await asyncio.to_thread(read_state, self._store, self._index)
            self.cache_bytes = sum(state.sizes.values())
            room, target = self._room(self.cache_bytes, short, space.total)
            victims = plan_eviction(
                state.snapshot,
                state.sizes,
                state.mtimes,
                state.refs,
                in_use=[d for d, n in self._usage.in_use.items() if n > 0],
                keep=self._upkeep.rules.keep,
                limit=room,
                target=target,
                hot_since=time.time() - self._upkeep.hot_window,
            )
            # A client may have started reading one since the plan was made.
            victims = {d: s for d, s in victims.items() if not self._usage.in_use.get(d)}
            if victims:
                await asyncio.to_thread(delete, self._store, self._index, Plan(content=victims))
                self.cache_bytes -= sum(victims.values())
                self.evicted_blobs += len(victims)
                self.evicted_bytes += sum(victims.values())
                log.info(
                    "evicted %d blobs (%d bytes) to stay under %d bytes (%d short of min_free)",
                    len(victims),
                    sum(victims.values()),
                    room,
                    short,
                )
            return victims

    def _room(self, used: int, short: int, total: int) -> tuple[int, int]:
        """(bytes the cache may hold, bytes eviction brings it down to) for a cache of
        ``used`` bytes on a disk of ``total`` bytes, ``short`` of min_free."""
        bounds = []
        if self._upkeep.limit is not None:
            room = max(self._upkeep.limit - self._budget.reserved, 0)
            bounds.append((room, int(room * LOW_WATER)))
        if short:
            room = max(used - short, 0)
            slack = int(total * FREE_SLACK)
            bounds.append((room, max(room - slack, 0)))
        return min(bounds) if bounds else (used, used)

    async def gc_once(self, dry_run: bool = False) -> Plan:
        async with self.lock:
            await self._usage.flush(self._index)
            rules = self._upkeep.rules
            return await asyncio.to_thread(gc, self._store, self._index, rules, dry_run)

    async def _evict_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._upkeep.evict_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.evict_once()
            except Exception:  # eviction must keep running; the next round retries
                log.exception("eviction failed")

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self._upkeep.gc_interval)
            try:
                await self.gc_once()
            except Exception:
                log.exception("lifecycle gc failed")
