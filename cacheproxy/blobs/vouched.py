"""The first link: a digest is served under an (upstream, repository) pair only by
the rule of ``cacheproxy/links.py``, whatever the links after it hold."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import RegistryError
from ..links import Links
from .source import BlobSource, Body, Want

T = TypeVar("T")


class Vouched:
    """Checks the pair's link (or has the upstream confirm it) before ``next`` serves.

    A digest this node does not hold (or is bringing in under the same pair) needs no
    confirmation: the fetch asks the upstream under the pair, and its answer is the
    rule. But the links after this one await (a slot for a fill, a thread): by the
    time they answer, another request may have brought the digest in. So a body not
    fetched under this pair (a file on disk, another pair's fill) is confirmed before
    it is handed out.
    """

    def __init__(self, links: Links, held: Callable[[Want], bool], next: BlobSource) -> None:
        self._links = links
        self._held = held
        self._next = next

    async def open(self, want: Want, first: int = 0) -> Body:
        confirmed = await self._vouch(want)
        body = await self._refusals(want, self._next.open(want, first))
        if not confirmed and not body.vouches(want.upstream.name, want.repo):
            try:
                await self._vouch(want, held=True)
            except BaseException:
                body.close()
                raise
        return body

    async def size(self, want: Want) -> int:
        confirmed = await self._vouch(want)
        if not confirmed and self._held(want):
            # Brought in while the pair was looked up: the size would tell it is here.
            await self._vouch(want, held=True)
        # No await between the look and the next link's look at the store and fills.
        return await self._refusals(want, self._next.size(want))

    async def _vouch(self, want: Want, held: bool | None = None) -> bool:
        if held is None:
            held = self._held(want)
        return await self._links.vouch(want.upstream, want.repo, want.digest, "blob", held)

    async def _refusals(self, want: Want, answer: Awaitable[T]) -> T:
        """The next link's answer; an upstream's refusal of the pair is remembered."""
        try:
            return await answer
        except RegistryError as exc:
            self._links.refuse(want.upstream.name, want.repo, str(want.digest), exc)
            raise
