"""Writing blob bytes to a client: a complete file, or a fill as it lands.

A complete blob goes out through the kernel's sendfile where the loop supports it
(the default asyncio loop on plain TCP); elsewhere (uvloop, TLS) through 1 MiB
``pread`` + write chunks, each awaited so a slow client never makes the proxy
buffer more than one chunk for it.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from ..fill import Fill

CHUNK = 1024 * 1024


async def send_fd(
    request: web.BaseRequest, resp: web.StreamResponse, fd: int, offset: int, count: int
) -> None:
    """Send ``count`` bytes of ``fd`` from ``offset``; ``resp`` is prepared.

    Raises ConnectionError when the client goes away.
    """
    if count <= 0:
        return
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    if transport.get_extra_info("sslcontext") is None:
        # Wrapping an open descriptor does no I/O.
        with open(fd, "rb", buffering=0, closefd=False) as fobj:  # noqa: ASYNC230
            try:
                await loop.sendfile(transport, fobj, offset, count, fallback=False)
                return
            except (NotImplementedError, asyncio.SendfileNotAvailableError):
                pass
    end = offset + count
    while offset < end:
        chunk = os.pread(fd, min(CHUNK, end - offset), offset)
        if not chunk:
            raise OSError("cached blob is shorter than its size")
        await resp.write(chunk)
        offset += len(chunk)


class Progress:
    """Bytes handed to the client so far (for the ledger, also after an error)."""

    sent = 0


async def send_fill(
    resp: web.StreamResponse, fill: Fill, start: int, end: int | None, progress: Progress
) -> None:
    """Send bytes ``start..end`` (inclusive; None: to the end) of a blob being filled.

    The last byte of the range, like the last byte of a whole blob, goes out only
    once the whole blob is verified: a range's bytes cannot be checked on their own,
    and a client must never see a clean end of a wrong body.

    Raises the fill's error when it fails: the caller must then abort the
    connection so the client sees a broken transfer, never a clean short one.
    """
    fd = fill.open_reader()
    try:
        pos = start
        while end is None or pos <= end:
            limit = await fill.readable(pos)
            if limit <= pos:
                break
            stop = limit if end is None else min(limit, end + 1)
            if end is not None and stop > end and not fill.verified:
                stop = end
                if stop <= pos:
                    await fill.wait_done()
                    continue
            while pos < stop:
                chunk = os.pread(fd, min(CHUNK, stop - pos), pos)
                if not chunk:
                    raise OSError("blob file shorter than its fill")
                await resp.write(chunk)
                pos += len(chunk)
                progress.sent += len(chunk)
    finally:
        os.close(fd)
