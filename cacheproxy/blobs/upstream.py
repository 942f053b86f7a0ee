"""The last link: the upstream registry itself."""

from __future__ import annotations

import logging

import aiohttp
from yarl import URL

from ..accounting import Origin
from ..errors import BlobUnknown, RangeNotSatisfiable, RegistryError, UpstreamUnavailable
from ..ranges import range_header
from ..upstream.client import error_for_status, pull_scope
from .relay import RelayBody
from .source import Body, Want

log = logging.getLogger(__name__)


class UpstreamFeed:
    """The blob from the upstream, as byte ranges (RFC 9110 section 14).

    When the registry redirects the blob to storage on another host (a presigned
    S3 URL, a CDN), later ranges go to that URL directly, without credentials,
    until it stops answering (an expired signature: 401, 403, 410, ...); then the
    range goes back through the registry, which redirects anew.
    """

    origin: Origin = "upstream"

    def __init__(self, want: Want, lanes: int = 1) -> None:
        self._want = want
        self.lanes = lanes
        self._storage: str | None = None
        # Once the upstream answered, the transfer is running: later ranges (a
        # resume, another segment) keep the retries; the first one fails fast.
        self._running = False

    async def open(self, start: int, end: int | None = None) -> aiohttp.ClientResponse:
        want = self._want
        wanted = range_header(start, end)
        headers = {"Range": wanted} if wanted else {}
        if self._storage is not None:
            resp = await self._from_storage(self._storage, headers)
            if resp is not None:
                return resp
        resp = await want.upstream.request(
            "GET",
            f"/v2/{want.repo}/blobs/{want.digest}",
            scope=pull_scope(want.repo),
            headers=headers,
            blob=True,
            running=self._running,
        )
        if resp.status in (200, 206):
            self._running = True
            if resp.url.origin() != URL(want.upstream.url).origin():
                # Redirected elsewhere: the signed URL serves the other ranges.
                self._storage = str(resp.url)
            return resp
        if resp.status == 416:
            err: RegistryError = RangeNotSatisfiable(
                headers={"Content-Range": resp.headers.get("Content-Range", "bytes */*")}
            )
        else:
            err = error_for_status(resp, BlobUnknown)
        resp.release()
        raise err

    async def _from_storage(
        self, url: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse | None:
        try:
            resp = await self._want.upstream.fetch_storage(url, headers)
        except UpstreamUnavailable:
            resp = None
        if resp is not None and resp.status in (200, 206):
            return resp
        if resp is not None:
            log.info(
                "storage URL of %s answered %d: asking the registry", self._want.digest, resp.status
            )
            resp.release()
        if self._storage == url:
            self._storage = None
        return None

    def blame(self) -> None:
        return None


class UpstreamSource:
    """Feeds fills from the upstream, and streams a blob through when asked directly.

    ``lanes``: the connections one blob's fill may use at once.
    """

    def __init__(self, lanes: int = 1) -> None:
        self._lanes = lanes

    def feed(self, want: Want) -> UpstreamFeed:
        return UpstreamFeed(want, self._lanes)

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
