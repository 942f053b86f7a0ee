"""Blob bytes onto a client's connection.

A file's bytes go out through the kernel's sendfile where the loop supports it (the
default asyncio loop on plain TCP, a body of known length); elsewhere (uvloop, TLS,
a chunked body) through 1 MiB ``pread`` + write chunks, each awaited so a slow
client never makes the proxy buffer more than one chunk for it.

Under a bandwidth limit (a peer's upload, ``peer_upload_rate``) the bytes go a
quantum of the limit at a time, each taken from its bucket first.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from ..rates import Rate

CHUNK = 1024 * 1024


class ResponseSink:
    """The body of a prepared response (sent under ``rate``, if one is given)."""

    def __init__(
        self, request: web.BaseRequest, resp: web.StreamResponse, rate: Rate | None = None
    ) -> None:
        self._request = request
        self._resp = resp
        self._rate = rate

    async def write(self, data: bytes) -> None:
        if self._rate is None:
            await self._resp.write(data)
            return
        view, step = memoryview(data), self._rate.quantum()
        for at in range(0, len(view), step):
            piece = view[at : at + step]
            await self._rate.take(len(piece))
            await self._resp.write(piece)

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Raises ConnectionError when the client goes away."""
        if self._rate is None:
            await self._sendfile(fd, offset, count)
            return
        step, end = self._rate.quantum(), offset + count
        while offset < end:
            piece = min(step, end - offset)
            await self._rate.take(piece)
            await self._sendfile(fd, offset, piece)
            offset += piece

    async def _sendfile(self, fd: int, offset: int, count: int) -> None:
        if count <= 0:
            return
        loop = asyncio.get_running_loop()
        transport = self._request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        # Chunked framing is written by aiohttp: bytes sent around it would not be framed.
        if transport.get_extra_info("sslcontext") is None and not self._resp.chunked:
            # Wrapping an open descriptor does no I/O.
            with open(fd, "rb", buffering=0, closefd=False) as fobj:  # noqa: ASYNC230
                try:
                    await loop.sendfile(transport, fobj, offset, count, fallback=False)
                    return
                except (NotImplementedError, asyncio.SendfileNotAvailableError):
                    # uvloop has no loop.sendfile, nor has every file system the
                    # syscall: the same bytes go by pread below.
                    pass
        end = offset + count
        while offset < end:
            # Off the loop: under TLS (no sendfile) a cold page cache would stall it.
            chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - offset), offset)
            if not chunk:
                raise OSError("blob file is shorter than its size")
            await self._resp.write(chunk)
            offset += len(chunk)
