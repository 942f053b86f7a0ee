"""The first link: a digest is served under an (upstream, repository) pair only by
the rule of ``cacheproxy/links.py``, whatever the links after it hold."""

from __future__ import annotations

from collections.abc import Callable

from ..links import Links
from .source import BlobSource, Body, Want


class Vouched:
    """Checks the pair's link (or has the upstream confirm it) before ``next`` serves."""

    def __init__(self, links: Links, held: Callable[[Want], bool], next: BlobSource) -> None:
        self._links = links
        self._held = held
        self._next = next

    async def open(self, want: Want, first: int = 0) -> Body:
        await self._vouch(want)
        return await self._next.open(want, first)

    async def size(self, want: Want) -> int:
        await self._vouch(want)
        return await self._next.size(want)

    async def _vouch(self, want: Want) -> None:
        await self._links.vouch(want.upstream, want.repo, want.digest, "blob", self._held(want))
