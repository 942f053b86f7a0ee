"""Blobs for one kind of caller: its chain of sources, and the bookkeeping around
every answer (what is being read, when it was last used, what the ledger counts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from ..accounting import Accounting, Origin
from ..oci import Digest
from ..store.usage import UsageLog
from ..upstream.client import Upstream
from .redirect import RedirectBody
from .source import BlobSource, Body, Sink, Want


class Delivery:
    """A body on its way to one caller: counts what it sends."""

    def __init__(self, body: Body) -> None:
        self._body = body
        #: Bytes the caller got (for a redirect: the bytes it was sent to fetch).
        self.sent = 0
        #: Where the caller is sent instead (a 307 to the shared tier), if anywhere.
        self.location = body.location if isinstance(body, RedirectBody) else None

    @property
    def origin(self) -> Origin:
        return self._body.origin

    async def size(self) -> int | None:
        return await self._body.size()

    async def final_size(self) -> int:
        return await self._body.final_size()

    async def send(self, sink: Sink, start: int, end: int | None) -> None:
        await self._body.send(_Counted(sink, self), start, end)


class _Counted:
    def __init__(self, sink: Sink, delivery: Delivery) -> None:
        self._sink = sink
        self._delivery = delivery

    async def write(self, data: bytes) -> None:
        await self._sink.write(data)
        self._delivery.sent += len(data)

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        await self._sink.sendfile(fd, offset, count)
        self._delivery.sent += count


# (upstream, repository, digest) -> raises to refuse the blob there before anything
# is fetched or sent (the signature policy, cacheproxy/policy/).
BlobCheck = Callable[[Upstream, str, Digest], Awaitable[None]]


class BlobService:
    """The chain for clients (or for peers), and what every answer is counted as."""

    def __init__(
        self,
        chain: BlobSource,
        usage: UsageLog,
        accounting: Accounting,
        check: BlobCheck | None = None,
    ) -> None:
        self._chain = chain
        self._usage = usage
        self._accounting = accounting
        self._check = check

    async def size(self, want: Want) -> int:
        """The blob's size for HEAD, without starting a download."""
        if self._check is not None:
            await self._check(want.upstream, want.repo, want.digest)
        return await self._chain.size(want)

    @asynccontextmanager
    async def open(self, want: Want, first: int = 0) -> AsyncIterator[Delivery]:
        """The blob's body while the caller sends it; ``first``: its first byte wanted.

        While it is open the blob is in use (eviction never removes it); when it
        closes, what was sent is recorded under the origin the body reports.
        """
        if self._check is not None:
            await self._check(want.upstream, want.repo, want.digest)
        body = await self._chain.open(want, first)
        key = str(want.digest)
        delivery = Delivery(body)
        self._usage.in_use[key] += 1
        try:
            yield delivery
        finally:
            self._usage.in_use[key] -= 1
            if not self._usage.in_use[key]:
                del self._usage.in_use[key]
            body.close()
            if delivery.sent:
                self._usage.blob(key)
                self._accounting.served(
                    want.upstream.name, want.repo, "blob", body.origin, delivery.sent
                )
