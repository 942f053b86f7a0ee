"""Collapse concurrent calls for one key into one call whose result all share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one call in flight per key.

    The call runs as a task owned here, not by the caller that started it: a
    client that goes away must not fail every other request waiting on it.
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Task[V]] = {}
        self.calls = 0

    async def run(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        return (await self.run_leading(key, fn))[0]

    async def run_leading(self, key: K, fn: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """Like :meth:`run`; the flag says whether this caller started the call."""
        task = self._inflight.get(key)
        leader = task is None
        if task is None:
            self.calls += 1
            task = asyncio.ensure_future(fn())
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        return await asyncio.shield(task), leader

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            # Mark the outcome retrieved: the waiters re-raise it themselves.
            task.exception()

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
