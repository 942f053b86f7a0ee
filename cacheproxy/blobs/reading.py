"""A response body read as the buffers it arrived in, and cut without copying."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import aiohttp

# A lane hands the file at most this much at a time.
MAX_CHUNK = 1024 * 1024
# Bytes a body's socket gathers at most before it wakes the loop (see BodyReader),
LOW_WATER = 128 * 1024
# and the seconds of its rate it gathers.
WAKE_EVERY = 0.05


class BodyReader:
    """A response body read as the buffers it arrived in: never joined or sliced (a
    copy of every byte, and a fresh allocation, is what a join costs).

    A body of known length is read in batches: the socket's ``SO_RCVLOWAT``
    (socket(7)) keeps the kernel from waking the loop for every packet of a stream
    that arrives paced (a shaped link, a throttled store), which costs a wake-up, a
    read and a Python call per packet: most of a fill's CPU on a slow link. The
    batch is what arrives in :data:`WAKE_EVERY` seconds at the rate seen so far, at
    most :data:`LOW_WATER` bytes and never more than is still to come, so a slow
    stream is not held back past a read timeout and the last bytes wake the loop.
    The setting is undone when the body ends, before the connection is reused.
    """

    def __init__(self, resp: aiohttp.ClientResponse, window: int | None = None) -> None:
        """``window``: the most the kernel may take in ahead of the reader (a body read
        under a bandwidth limit); None leaves the socket's own autotuning."""
        self._content = resp.content
        self._taken = 0
        self._length = resp.content_length
        self._sock: socket.socket | None = None
        self._low = 1
        self._since = (time.monotonic(), 0)
        self._rate = 0.0
        if self._length is not None and resp.connection is not None:
            transport = resp.connection.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            self._sock = sock if sock is not None and sock.type == socket.SOCK_STREAM else None
        if window is not None and resp.connection is not None:
            self._cap(resp.connection.transport, window)

    @staticmethod
    def _cap(transport: asyncio.BaseTransport | None, window: int) -> None:
        """A receive buffer of ``window`` bytes (socket(7) SO_RCVBUF; it also ends the
        autotuning that would grow it to megabytes while the reader waits on its
        limit): a body read slowly then arrives slowly, where the sender would
        otherwise fill every lane's buffers at the link's rate."""
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or sock.type != socket.SOCK_STREAM:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)

    def _water(self, low: int) -> None:
        if self._sock is None or low == self._low:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low)
        except OSError:
            self._sock = None
            return
        self._low = low

    def close(self) -> None:
        """The body ended (or was given up): the socket wakes for every byte again."""
        self._water(1)

    def _tune(self) -> None:
        assert self._length is not None
        now, got = time.monotonic(), self._content.total_bytes
        then, before = self._since
        if now - then >= WAKE_EVERY:
            rate = (got - before) / (now - then)
            # Follow a rate that drops at once, one that rises over a few looks.
            self._rate = rate if rate < self._rate else (self._rate + rate) / 2
            self._since = (now, got)
        # Never more than is still to come: the last bytes must wake the loop too.
        left = self._length - got
        self._water(max(1, min(LOW_WATER, int(self._rate * WAKE_EVERY), left)))

    async def next(self, most: int = MAX_CHUNK) -> list[bytes | memoryview]:
        """What has arrived: at least one buffer (waiting for it), at most about
        ``most`` bytes (one buffer past it at worst); nothing at the end of the body."""
        watchdog = None
        if self._sock is not None and self._length is not None:
            self._tune()
            if self._low > 1:
                # A stream that slows down at once: wake for every byte again soon.
                loop = asyncio.get_running_loop()
                watchdog = loop.call_later(2 * WAKE_EVERY, self._water, 1)
        try:
            return await self._gather(most)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    async def _gather(self, most: int) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = []
        total = 0
        while total < most:
            if parts and self._content.total_bytes <= self._taken:
                break  # nothing more has arrived yet
            data, end_of_chunk = await self._content.readchunk()
            if not data:
                if end_of_chunk:  # the end of an HTTP chunk: data may follow
                    continue
                break
            parts.append(data)
            total += len(data)
            self._taken += len(data)
        return parts


def drop(parts: list[bytes | memoryview], count: int) -> list[bytes | memoryview]:
    """``parts`` without their first ``count`` bytes."""
    out = []
    for part in parts:
        if count >= len(part):
            count -= len(part)
            continue
        out.append(memoryview(part)[count:] if count else part)
        count = 0
    return out


def keep(parts: list[bytes | memoryview], count: int) -> list[bytes | memoryview]:
    """The first ``count`` bytes of ``parts``."""
    out = []
    for part in parts:
        if count <= 0:
            break
        out.append(part if len(part) <= count else memoryview(part)[:count])
        count -= len(part)
    return out
