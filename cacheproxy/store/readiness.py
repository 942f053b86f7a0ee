"""Whether the cache can serve: the answer ``/readyz`` gives."""

from __future__ import annotations

import asyncio

from .files import BlobStore
from .index import Index


class Readiness:
    """What keeps the proxy from serving, if anything (``/readyz``)."""

    def __init__(self, store: BlobStore, index: Index) -> None:
        self._store = store
        self._index = index

    async def problems(self) -> list[str]:
        found = []
        if not await asyncio.to_thread(self._store.writable):
            found.append(f"cache directory {self._store.root} is not writable")
        if not await self._index.ping():
            found.append("metadata index does not answer")
        return found
