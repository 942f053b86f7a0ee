"""Streaming a miss straight through when the disk is too full to cache it.

The client still never sees a clean end of a wrong body: the bytes are hashed as
they pass and the last one is sent only if the digest matches. A ranged request
is relayed as the upstream answers it (a part of a blob cannot be verified; the
client checks the whole it assembles).
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from ..errors import BlobUnknown
from ..oci import Digest
from ..proxy import Proxy, scope_for
from ..upstream.client import Upstream, error_for_status
from .send import Progress

log = logging.getLogger(__name__)


async def passthrough(
    request: web.Request,
    proxy: Proxy,
    up: Upstream,
    name: str,
    digest: Digest,
    headers: dict[str, str],
    progress: Progress,
) -> web.StreamResponse:
    proxy.passthroughs += 1
    log.warning("disk nearly full: streaming %s through without caching it", digest)
    wanted = request.headers.get("Range")
    upstream = await up.request(
        "GET",
        f"/v2/{name}/blobs/{digest}",
        scope=scope_for(name),
        headers={"Range": wanted} if wanted else {},
    )
    async with upstream:
        if upstream.status not in (200, 206):
            raise error_for_status(upstream, BlobUnknown)
        resp = web.StreamResponse(status=upstream.status, headers=headers)
        if "Content-Range" in upstream.headers:
            resp.headers["Content-Range"] = upstream.headers["Content-Range"]
        if upstream.content_length is not None:
            resp.content_length = upstream.content_length
        await resp.prepare(request)
        whole = upstream.status == 200
        hasher = digest.hasher()
        held = b""
        try:
            async for chunk in upstream.content.iter_any():
                if whole:
                    hasher.update(chunk)
                    chunk, held = held + chunk[:-1], chunk[-1:]
                if chunk:
                    await resp.write(chunk)
                    progress.sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError):
            return _abort(request, resp, digest, "upstream broke off")
        except ConnectionError:
            return resp
        if whole and hasher.hexdigest() != digest.hex:
            return _abort(request, resp, digest, "upstream bytes do not match the digest")
        if held:
            try:
                await resp.write(held)
                progress.sent += len(held)
            except ConnectionError:
                return resp
    return resp


def _abort(
    request: web.Request, resp: web.StreamResponse, digest: Digest, why: str
) -> web.StreamResponse:
    log.warning("aborting pass-through of %s: %s", digest, why)
    if request.transport is not None:
        request.transport.abort()
    return resp
