"""A blob streamed through from a feed without being cached.

Used when the disk is too full to cache a miss. The client still never sees a
clean end of a wrong body: a whole blob is hashed as it passes and its last byte
goes out only if the digest matches. A range is relayed as the feed answers it (a
part of a blob cannot be verified on its own; the client checks the whole it
assembles).
"""

from __future__ import annotations

import logging

import aiohttp

from ..accounting import Origin
from ..errors import UpstreamBadContent, UpstreamUnavailable
from ..oci import Digest
from ..ranges import parse_content_range
from .source import Feed, Sink

log = logging.getLogger(__name__)


class RelayBody:
    """The feed's answer, passed on as it arrives."""

    def __init__(
        self, feed: Feed, digest: Digest, resp: aiohttp.ClientResponse, offset: int
    ) -> None:
        self._feed = feed
        self._digest = digest
        self._resp = resp
        self._offset = offset
        self._origin = feed.origin
        self._size: int | None = resp.content_length
        if resp.status == 206:
            self._size = parse_content_range(resp.headers.get("Content-Range", ""))[1]

    @classmethod
    async def open(cls, feed: Feed, digest: Digest, first: int) -> RelayBody:
        resp = await feed.open(first, None)
        offset = 0
        if resp.status == 206:
            start, _ = parse_content_range(resp.headers.get("Content-Range", ""))
            if start is None:
                resp.close()
                raise UpstreamBadContent("upstream answered a range without Content-Range")
            offset = start
        return cls(feed, digest, resp, offset)

    @property
    def origin(self) -> Origin:
        return self._origin

    async def size(self) -> int | None:
        return self._size

    async def final_size(self) -> int:
        if self._size is None:
            raise UpstreamUnavailable("upstream did not say the blob's size")
        return self._size

    async def send(self, sink: Sink, start: int, end: int | None) -> None:
        if start < self._offset:
            raise UpstreamBadContent("upstream answered with the wrong range")
        size = self._size
        whole = self._offset == 0 and start == 0 and (end is None or end == (size or 0) - 1)
        hasher = self._digest.hasher() if whole else None
        held = b""
        pos = self._offset
        try:
            async for chunk in self._resp.content.iter_any():
                at, pos = pos, pos + len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                lo = max(start - at, 0)
                hi = len(chunk) if end is None else min(len(chunk), end + 1 - at)
                if hi > lo:
                    piece = chunk[lo:hi] if (lo, hi) != (0, len(chunk)) else chunk
                    if hasher is not None:
                        # Hold the last byte back until the digest is checked.
                        piece, held = held + piece[:-1], piece[-1:]
                    if piece:
                        await sink.write(piece)
                if end is not None and pos > end:
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable("upstream broke off the blob") from exc
        wanted_end = size if end is None else end + 1
        if wanted_end is not None and pos < wanted_end:
            raise UpstreamUnavailable("upstream body ended early")
        if hasher is not None:
            if hasher.hexdigest() != self._digest.hex:
                self._feed.blame()
                log.error("stream-through of %s: the bytes do not match the digest", self._digest)
                raise UpstreamBadContent("upstream blob does not match its digest")
            if held:
                await sink.write(held)

    def vouches(self, upstream: str, repo: str) -> bool:
        return True  # this request's own transfer, under its own pair

    def close(self) -> None:
        # A body not read to its end cannot go back to the connection pool.
        self._resp.close()
