"""A blob as its fill lands: what a reader of a fill (a client, or a peer) is sent.

Readers open the fill's temp file themselves and send what is on disk with the
kernel's sendfile, so N readers cost N file descriptors and no memory. For a
client, the last byte of the range goes out only once the whole blob is verified
(a client must never see a clean end of a wrong body); a peer verifies the whole
blob itself before it keeps or serves anything, so it is sent every byte as it
lands (``hold=False``), and a range of a blob another node is tailing never waits
for the rest of the blob.
"""

from __future__ import annotations

import asyncio
import os

from ..accounting import Origin
from ..errors import UpstreamUnavailable
from .fill import SEND_BATCH, Fill
from .source import Sink

# What a peer reader (no byte held back) wakes for at least, after its first byte.
PEER_BATCH = 256 * 1024


class FillBody:
    """A blob as its fill lands: readers tail the temp file up to what is verified
    (``hold``: a client's), or up to what is on disk (a peer's)."""

    def __init__(
        self, fill: Fill, started: bool, hold: bool = True, idle: float | None = None
    ) -> None:
        self._fill = fill
        self._started = started
        self._hold = hold
        # Seconds a reader waits for its next bytes before it gives up (None: as long
        # as the fill runs): a peer asking a holder for a range re-asks it elsewhere.
        self._idle = idle
        self._closed = False
        fill.attach()

    @property
    def origin(self) -> Origin:
        # Joining another request's fill costs no transfer: the cache served it.
        return self._fill.origin if self._started else "cache"

    async def size(self) -> int | None:
        await self._fill.started()
        return self._fill.size

    async def final_size(self) -> int:
        await self._fill.wait_done()
        assert self._fill.size is not None
        return self._fill.size

    async def send(self, sink: Sink, start: int, end: int | None) -> None:
        """Tail the fill. The last byte of the range, like the last byte of a whole
        blob, goes out only once the whole blob is verified: a range's bytes cannot
        be checked on their own (unless the reader is a peer, ``hold`` False)."""
        fill = self._fill
        await fill.started()
        fd = fill.open_reader()
        try:
            pos = start
            batch = 1  # the first byte goes out as soon as it lands
            while end is None or pos <= end:
                want = batch if end is None else min(batch, end + 1 - pos)
                try:
                    async with asyncio.timeout(self._idle):
                        limit = await fill.readable(pos, want, self._hold)
                except TimeoutError:
                    raise UpstreamUnavailable("the range is not arriving here") from None
                # A peer may be tailing a fill that lands slowly: it is sent smaller
                # batches, so its bytes keep coming within its read timeout.
                batch = SEND_BATCH if self._hold else PEER_BATCH
                if limit <= pos:
                    break
                stop = limit if end is None else min(limit, end + 1)
                if self._hold and end is not None and stop > end and not fill.verified:
                    stop = end
                    if stop <= pos:
                        await fill.wait_done()
                        continue
                # What is on disk goes out as a complete blob's would: the kernel's
                # sendfile, no copy through the proxy.
                await sink.sendfile(fd, pos, stop - pos)
                pos = stop
        finally:
            os.close(fd)

    def vouches(self, upstream: str, repo: str) -> bool:
        # A fill fetches under the pair that started it.
        return self._fill.pair == (upstream, repo)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._fill.detach()
