"""Blob bytes onto a client's connection.

A file's bytes go out through the kernel's sendfile where the loop supports it (the
default asyncio loop on plain TCP, a body of known length); elsewhere (uvloop, TLS,
a chunked body) through 1 MiB ``pread`` + write chunks, each awaited so a slow
client never makes the proxy buffer more than one chunk for it.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

CHUNK = 1024 * 1024


class ResponseSink:
    """The body of a prepared response."""

    def __init__(self, request: web.BaseRequest, resp: web.StreamResponse) -> None:
        self._request = request
        self._resp = resp

    async def write(self, data: bytes) -> None:
        await self._resp.write(data)

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Raises ConnectionError when the client goes away."""
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
