"""A response body read as the buffers it arrived in, and cut without copying."""

from __future__ import annotations

import aiohttp

# A lane hands the file at most this much at a time.
MAX_CHUNK = 1024 * 1024


class BodyReader:
    """A response body read as the buffers it arrived in: never joined or sliced (a
    copy of every byte, and a fresh allocation, is what a join costs)."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._taken = 0

    async def next(self) -> list[bytes | memoryview]:
        """What has arrived: at least one buffer (waiting for it), at most about
        ``MAX_CHUNK``; nothing at the end of the body."""
        parts: list[bytes | memoryview] = []
        total = 0
        while total < MAX_CHUNK:
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
