"""The last link: the upstream registry itself."""

from __future__ import annotations

import aiohttp

from ..accounting import Origin
from ..errors import BlobUnknown, RangeNotSatisfiable, RegistryError, UpstreamUnavailable
from ..ranges import range_header
from ..upstream.client import error_for_status, pull_scope
from .relay import RelayBody
from .source import Body, Want


class UpstreamFeed:
    """The blob from the upstream, resumed with ``Range`` after a break (RFC 9110 14)."""

    origin: Origin = "upstream"

    def __init__(self, want: Want, lanes: int = 1) -> None:
        self._want = want
        self.lanes = lanes

    async def open(self, start: int, end: int | None = None) -> aiohttp.ClientResponse:
        want = self._want
        wanted = range_header(start, end)
        headers = {"Range": wanted} if wanted else {}
        resp = await want.upstream.request(
            "GET",
            f"/v2/{want.repo}/blobs/{want.digest}",
            scope=pull_scope(want.repo),
            headers=headers,
        )
        if resp.status in (200, 206):
            return resp
        if resp.status == 416:
            err: RegistryError = RangeNotSatisfiable(
                headers={"Content-Range": resp.headers.get("Content-Range", "bytes */*")}
            )
        else:
            err = error_for_status(resp, BlobUnknown)
        resp.release()
        raise err

    def blame(self) -> None:
        return None


class UpstreamSource:
    """Feeds fills from the upstream, and streams a blob through when asked directly."""

    def feed(self, want: Want) -> UpstreamFeed:
        return UpstreamFeed(want)

    async def open(self, want: Want, first: int = 0) -> Body:
        return await RelayBody.open(self.feed(want), want.digest, first)

    async def size(self, want: Want) -> int:
        resp = await want.upstream.request(
            "HEAD", f"/v2/{want.repo}/blobs/{want.digest}", scope=pull_scope(want.repo)
        )
        async with resp:
            if resp.status != 200:
                raise error_for_status(resp, BlobUnknown)
            if resp.content_length is None:
                raise UpstreamUnavailable("upstream did not say the blob's size")
            return resp.content_length
