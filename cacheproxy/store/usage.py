"""Access times and hit counts, counted in memory on the serving path and written
to the index in batches, so serving a hit costs no SQLite write."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from .index import Index

log = logging.getLogger(__name__)


class UsageLog:
    """Blob and tag use since the last flush, plus what is being served right now."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._blobs: dict[str, tuple[float, int]] = {}
        self._tags: dict[tuple[str, str, str], tuple[float, int]] = {}
        #: Blobs with a client reading them now: eviction never removes these.
        self.in_use: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    def blob(self, digest: str) -> None:
        self._blobs[digest] = (self._clock(), self._blobs.get(digest, (0.0, 0))[1] + 1)

    def tag(self, upstream: str, name: str, tag: str) -> None:
        key = (upstream, name, tag)
        self._tags[key] = (self._clock(), self._tags.get(key, (0.0, 0))[1] + 1)

    def pending(self, digest: str) -> float | None:
        """The last access of ``digest`` not yet written to the index."""
        found = self._blobs.get(digest)
        return found[0] if found else None

    def drain(
        self,
    ) -> tuple[dict[str, tuple[float, int]], dict[tuple[str, str, str], tuple[float, int]]]:
        blobs, tags = self._blobs, self._tags
        self._blobs, self._tags = {}, {}
        return blobs, tags

    async def flush(self, index: Index) -> None:
        blobs, tags = self.drain()
        if blobs or tags:
            await asyncio.to_thread(index.record_access, blobs, tags)

    def start(self, index: Index, interval: float = 5.0) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.flush(index)
                except Exception:  # keep counting; the next flush retries
                    log.exception("writing access times failed")

        self._task = asyncio.create_task(loop(), name="usage log")

    async def close(self, index: Index) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush(index)
