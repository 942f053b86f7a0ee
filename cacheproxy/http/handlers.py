"""Thin handlers for the pull side of the OCI distribution API.

Parse and validate (``oci.parse_path``), call the Proxy, write the answer.
Push endpoints exist only to say UNSUPPORTED: this is a pull-through cache.
"""

from __future__ import annotations

import contextlib
import logging
import os

from aiohttp import web

from ..errors import NotFound, RegistryError, Unsupported
from ..fill import Fill
from ..metrics import CONTENT_TYPE
from ..oci import Route, parse_digest, parse_path, split_host, validate_name
from ..proxy import NoRoom, Proxy
from ..store.blobs import OpenBlob
from ..upstream.client import Upstream
from ..upstream.presets import DOCKER_HUB
from .access import ANONYMOUS
from .keys import ACCESS, METRICS, NAMESPACE, PROXY, SUBJECT
from .passthrough import passthrough
from .ranges import content_range, parse_range
from .send import Progress, send_fd, send_fill

log = logging.getLogger(__name__)

READ_METHODS = ("GET", "HEAD")


def route_request(request: web.Request, route: Route) -> tuple[Route, Upstream]:
    """The upstream a request is for, and the repository name there.

    Three ways, as clients reach a mirror: containerd appends ``?ns=<registry>``
    (OCI distribution spec, "Proxying"); CRI-O and podman put the registry host
    first in the path (``/v2/docker.io/library/alpine/...``); Docker's
    ``registry-mirrors`` name no registry at all, which means the default upstream.
    """
    proxy = request.app[PROXY]
    ns = request.query.get("ns")
    if ns is not None:
        up = proxy.upstream(ns)
        request[NAMESPACE] = ns
        name = validate_name(route.name)
    else:
        host, name = split_host(route.name)
        up = proxy.upstream(host)
    if up.name == DOCKER_HUB and "/" not in name:
        # Docker Hub's official images live under library/ (what docker pull does).
        name = f"library/{name}"
    policy = request.app[ACCESS]
    if policy.rules:
        policy.check(request.get(SUBJECT, ANONYMOUS), up.name, name)
    return Route(route.kind, name, route.reference), up


async def v2(request: web.Request) -> web.StreamResponse:
    route = parse_path(request.path)
    if request.method not in READ_METHODS or route.kind == "upload":
        raise Unsupported(f"{request.method} is not supported by a pull-through cache")
    if route.kind == "base":
        return web.json_response({})
    if route.kind not in ("manifest", "blob", "tags"):
        raise NotFound(f"the {route.kind} endpoint is not offered by this proxy")
    route, up = route_request(request, route)
    if route.kind == "manifest":
        return await manifest(request, up, route)
    if route.kind == "blob":
        return await blob(request, up, route)
    return await tags(request, up, route)


async def not_found(request: web.Request) -> web.StreamResponse:
    raise NotFound("unknown path")


async def manifest(
    request: web.Request, up: Upstream, route: Route, peer: bool = False
) -> web.StreamResponse:
    """A manifest; ``peer``: a peer node's request (served locally, not in the ledger)."""
    proxy = request.app[PROXY]
    want_body = request.method == "GET"
    accept = request.headers.getall("Accept", [])
    answer = await proxy.manifest(up, route.name, route.reference, accept, want_body, peer)
    headers = {
        "Docker-Content-Digest": answer.digest,
        "ETag": f'"{answer.digest}"',
        "Content-Type": answer.media_type,
    }
    if answer.body is None:
        # HEAD: the length of the body a GET would carry (RFC 9110 section 9.3.2).
        headers["Content-Length"] = str(answer.size)
        return web.Response(status=200, headers=headers)
    proxy.access.blob(answer.digest)
    if ":" not in route.reference:
        proxy.access.tag(up.name, route.name, route.reference)
    if not peer:
        proxy.accounting.served(up.name, route.name, "manifest", answer.source, answer.size)
    return web.Response(status=200, body=answer.body, headers=headers)


def blob_headers(digest: str) -> dict[str, str]:
    return {
        "Docker-Content-Digest": digest,
        "ETag": f'"{digest}"',
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        # Content-addressed: the bytes behind a digest never change.
        "Cache-Control": "public, max-age=31536000, immutable",
    }


async def blob(
    request: web.Request, up: Upstream, route: Route, peer: bool = False
) -> web.StreamResponse:
    """A blob, with ranges; ``peer``: a peer node's request (served from this node's
    cache or its own upstream fill, never forwarded, not in the ledger)."""
    proxy = request.app[PROXY]
    digest = parse_digest(route.reference)
    if request.method == "HEAD":
        size = await proxy.blob_size(up, route.name, digest)
        headers = blob_headers(str(digest))
        headers["Content-Length"] = str(size)
        return web.Response(status=200, headers=headers)
    progress = Progress()
    try:
        found, started = proxy.open_blob(up, route.name, digest, local_only=peer)
    except NoRoom:
        try:
            return await passthrough(
                request, proxy, up, route.name, digest, blob_headers(str(digest)), progress
            )
        finally:
            if progress.sent and not peer:
                proxy.accounting.served(up.name, route.name, "blob", "upstream", progress.sent)
    key = str(digest)
    proxy.access.in_use[key] += 1
    try:
        if isinstance(found, OpenBlob):
            try:
                return await _send_complete(request, found, key, progress)
            finally:
                os.close(found.fd)
        return await _send_filling(request, found, key, progress)
    finally:
        proxy.access.in_use[key] -= 1
        if not proxy.access.in_use[key]:
            del proxy.access.in_use[key]
        if progress.sent:
            proxy.access.blob(key)
        if progress.sent and not peer:
            # A joined fill or a complete file cost no transfer: the cache served it.
            origin = found.origin if isinstance(found, Fill) and started else "cache"
            proxy.accounting.served(up.name, route.name, "blob", origin, progress.sent)


def _plan(request: web.Request, size: int) -> tuple[int, int, int]:
    """(status, start, end inclusive) for a blob of ``size`` bytes; raises 416."""
    wanted = parse_range(request.headers.get("Range"))
    if wanted is None:
        return 200, 0, size - 1
    start, end = wanted.resolve(size)
    return 206, start, end


def _response(status: int, digest: str, start: int, end: int, size: int) -> web.StreamResponse:
    resp = web.StreamResponse(status=status, headers=blob_headers(digest))
    if status == 206:
        resp.headers["Content-Range"] = content_range(start, end, size)
    resp.content_length = end - start + 1
    return resp


async def _send_complete(
    request: web.Request, blob: OpenBlob, digest: str, progress: Progress
) -> web.StreamResponse:
    status, start, end = _plan(request, blob.size)
    resp = _response(status, digest, start, end, blob.size)
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client went away: nothing to do
        await send_fd(request, resp, blob.fd, start, end - start + 1)
        progress.sent = end - start + 1
    # aiohttp finishes a returned response (write_eof), quietly if the client is gone.
    return resp


async def _send_filling(
    request: web.Request, fill: Fill, digest: str, progress: Progress
) -> web.StreamResponse:
    await fill.started()
    size = fill.size
    if size is None:
        # The upstream did not announce a length: ranges need it, so wait for the
        # whole blob; a plain GET streams chunked as the bytes land.
        if request.headers.get("Range"):
            await fill.wait_done()
            size = fill.size
        else:
            resp = web.StreamResponse(status=200, headers=blob_headers(digest))
            resp.enable_chunked_encoding()
            return await _stream(request, resp, fill, 0, None, progress)
    assert size is not None
    status, start, end = _plan(request, size)
    resp = _response(status, digest, start, end, size)
    return await _stream(request, resp, fill, start, end, progress)


async def _stream(
    request: web.Request,
    resp: web.StreamResponse,
    fill: Fill,
    start: int,
    end: int | None,
    progress: Progress,
) -> web.StreamResponse:
    await resp.prepare(request)
    try:
        await send_fill(resp, fill, start, end, progress)
    except ConnectionError:
        pass  # the client went away; the fill goes on without it
    except RegistryError as err:
        # Headers are gone: the only honest signal left is a broken connection.
        log.warning("aborting %s for a client: %s", fill.digest, err.message)
        if request.transport is not None:
            request.transport.abort()
    return resp


async def tags(request: web.Request, up: Upstream, route: Route) -> web.StreamResponse:
    proxy: Proxy = request.app[PROXY]
    page = await proxy.tags(up, route.name, dict(request.query))
    headers = {"Link": page.link} if page.link else {}
    return web.Response(body=page.body, content_type=page.content_type, headers=headers)


async def metrics(request: web.Request) -> web.StreamResponse:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.StreamResponse:
    """The process is alive and its loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready to serve: the cache directory is writable and the index answers."""
    proxy = request.app[PROXY]
    problems = await proxy.check_ready()
    if problems:
        return web.json_response({"status": "unready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})
