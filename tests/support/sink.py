"""An in-memory :class:`cacheproxy.blobs.source.Sink`: what a body sent, byte for byte."""

from __future__ import annotations

import os

from cacheproxy.blobs.source import Body


class MemorySink:
    """Collects every byte a body sends (``write``, and ``sendfile`` read with ``pread``)."""

    def __init__(self) -> None:
        self._parts = bytearray()
        #: How many calls delivered bytes (each write or sendfile).
        self.calls = 0

    @property
    def data(self) -> bytes:
        """Everything received so far."""
        return bytes(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    async def write(self, data: bytes) -> None:
        self._parts += data
        self.calls += 1

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        end = offset + count
        while offset < end:
            chunk = os.pread(fd, end - offset, offset)
            if not chunk:
                raise OSError(f"file ends at {offset}, {end - offset} bytes short")
            self._parts += chunk
            offset += len(chunk)
        self.calls += 1


async def send_all(body: Body, start: int = 0, end: int | None = None) -> bytes:
    """Send ``body`` (``start..end`` inclusive) into a fresh sink; its bytes."""
    sink = MemorySink()
    await body.send(sink, start, end)
    return sink.data
