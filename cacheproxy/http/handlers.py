"""Thin handlers for the pull side of the OCI distribution API.

Parse and validate (``oci.parse_path``), call one service, write the answer.
Push endpoints exist only to say UNSUPPORTED: this is a pull-through cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from ..accounting import Kind, Origin
from ..blobs.service import BlobService, Delivery
from ..blobs.source import PEER_REQUESTER, Want
from ..conditional import Outcome, Preconditions, digest_tag, range_applies
from ..errors import DigestInvalid, NotFound, PreconditionFailed, RegistryError, Unsupported
from ..fairness import client_address
from ..manifests.listing import NextPage
from ..manifests.service import Manifest, ManifestService
from ..oci import Route, parse_digest, parse_path, split_host, validate_name
from ..ranges import ByteRange, content_range, parse_range
from ..registries import DOCKER_HUB, clean_host
from ..upstream.client import Upstream
from . import lists
from .clientauth import ANONYMOUS
from .keys import (
    BLOBS,
    CLIENT_AUTH,
    CONNECTION_GONE,
    MANIFESTS,
    METRICS,
    NAMESPACE,
    SEND_RATE,
    STARTED,
    SUBJECT,
    UPSTREAMS,
)
from .sink import ResponseSink

log = logging.getLogger(__name__)

READ_METHODS = ("GET", "HEAD")


def route_request(request: web.Request, route: Route) -> tuple[Route, Upstream]:
    """The upstream a request is for, and the repository name there.

    Three ways, as clients reach a mirror: containerd appends ``?ns=<registry>``
    (OCI distribution spec, "Proxying"); CRI-O and podman put the registry host
    first in the path (``/v2/docker.io/library/alpine/...``); Docker's
    ``registry-mirrors`` name no registry at all, which means the default upstream.
    """
    upstreams = request.app[UPSTREAMS]
    # Who asks: bounds what a client can make the ecr preset build (pool.py).
    client = requester_of(request)
    ns = request.query.get("ns")
    if ns is not None:
        up = upstreams.get(ns, client)
        echo = clean_host(ns)
        if echo is not None:
            # Echoed normalised, or not at all: a raw value could carry CR/LF.
            request[NAMESPACE] = echo
        name = validate_name(route.name)
    else:
        host, name = split_host(route.name)
        up = upstreams.get(host, client)
    if up.name == DOCKER_HUB and "/" not in name:
        # Docker Hub's official images live under library/ (what docker pull does).
        name = f"library/{name}"
    auth = request.app[CLIENT_AUTH]
    if auth.rules:
        auth.check(request.get(SUBJECT, ANONYMOUS), up.name, name)
    return Route(route.kind, name, route.reference), up


def first_byte(request: web.Request, kind: Kind, source: Origin) -> None:
    """A client's answer is about to send its first byte (peers' are not timed)."""
    started = request.get(STARTED)
    if started is not None:
        request.app[METRICS].first_byte.observe(kind, source, time.monotonic() - started)


async def v2(request: web.Request) -> web.StreamResponse:
    request[STARTED] = time.monotonic()
    route = parse_path(request.path)
    if request.method not in READ_METHODS or route.kind == "upload":
        raise Unsupported(f"{request.method} is not supported by a pull-through cache")
    if route.kind == "base":
        return web.json_response({})
    if route.kind not in ("manifest", "blob", "tags", "referrers"):
        raise NotFound(f"the {route.kind} endpoint is not offered by this proxy")
    path_name = route.name  # as the request named it: a next page's link does too
    route, up = route_request(request, route)
    if route.kind == "manifest":
        return await send_manifest(request, request.app[MANIFESTS], up, route)
    if route.kind == "blob":
        return await send_blob(request, request.app[BLOBS], up, route, requester_of(request))
    ns = request.query.get("ns")
    if route.kind == "referrers":
        named = NextPage(path_name, ns, f"referrers/{route.reference}")
        return await lists.referrers(request, up, route, named)
    return await lists.tags(request, up, route, NextPage(path_name, ns))


async def not_found(request: web.Request) -> web.StreamResponse:
    raise NotFound("unknown path")


async def send_manifest(
    request: web.Request, manifests: ManifestService, up: Upstream, route: Route
) -> web.StreamResponse:
    """A manifest by tag or digest (for a client, or for a peer node), under the
    request's preconditions (RFC 9110 section 13)."""
    want_body = request.method == "GET"
    accept = request.headers.getall("Accept", [])
    conditions = Preconditions.of(request.headers)

    async def ask(body: bool) -> Manifest:
        return await manifests.manifest(up, route.name, route.reference, accept, body)

    if want_body and conditions and _may_not_serve(conditions, route.reference):
        # Asked as a HEAD first: a 304 or 412 then brings no body from anywhere and
        # is no pull in the ledger (which counts the bodies sent). Errors come first,
        # as for the request without its conditions (section 13.2.1).
        probe = await ask(False)
        outcome = conditions.evaluate(digest_tag(probe.digest))
        if outcome is not Outcome.SERVE:
            return conditional_answer(outcome, manifest_headers(probe))
    answer = await ask(want_body)
    headers = manifest_headers(answer)
    # The answer itself decides: a tag may have moved since the probe.
    outcome = conditions.evaluate(digest_tag(answer.digest)) if conditions else Outcome.SERVE
    if outcome is not Outcome.SERVE:
        return conditional_answer(outcome, headers)
    if answer.body is None:
        # HEAD: the length of the body a GET would carry (RFC 9110 section 9.3.2).
        headers["Content-Length"] = str(answer.size)
        return web.Response(status=200, headers=headers)
    first_byte(request, "manifest", answer.origin)
    return web.Response(status=200, body=answer.body, headers=headers)


def _may_not_serve(conditions: Preconditions, reference: str) -> bool:
    """Whether the conditions may answer 304 or 412: always for a tag (what it names
    is known once resolved); for a digest, by the digest itself."""
    if ":" not in reference:
        return True
    try:
        digest = str(parse_digest(reference))
    except DigestInvalid:
        return True  # refused by the service, as without the conditions
    return conditions.evaluate(digest_tag(digest)) is not Outcome.SERVE


def manifest_headers(answer: Manifest) -> dict[str, str]:
    """The fields a manifest's 200 carries (of which a 304 keeps some). A tag served
    stale says so: RFC 9211's Cache-Status (why, in ``detail``) and the Warning of
    RFC 7234 section 5.5.1 that older clients and log pipelines still read."""
    headers = {
        "Docker-Content-Digest": answer.digest,
        "ETag": str(digest_tag(answer.digest)),
        "Content-Type": answer.media_type,
    }
    if answer.stale is not None:
        headers["Cache-Status"] = f'cacheproxy; hit; fwd=stale; detail="{answer.stale}"'
        headers["Warning"] = '110 cacheproxy "Response is Stale"'
    return headers


# RFC 9110 section 15.4.5: a 304 carries those of these a 200 would (Date aiohttp
# adds), and no other representation metadata. Docker-Content-Digest stays: it is
# how a registry client is told the digest, and it says which one is unchanged.
NOT_MODIFIED_FIELDS = (
    "Docker-Content-Digest",
    "ETag",
    "Cache-Control",
    "Content-Location",
    "Expires",
    "Vary",
)


def conditional_answer(outcome: Outcome, headers: dict[str, str]) -> web.StreamResponse:
    """304 Not Modified, or raises 412 Precondition Failed (section 13.2.2)."""
    if outcome is Outcome.FAILED:
        raise PreconditionFailed("If-Match names no entity tag of this representation")
    kept = {k: v for k, v in headers.items() if k in NOT_MODIFIED_FIELDS}
    return web.Response(status=304, headers=kept)


def blob_headers(digest: str) -> dict[str, str]:
    return {
        "Docker-Content-Digest": digest,
        "ETag": str(digest_tag(digest)),
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        # Content-addressed: the bytes behind a digest never change.
        "Cache-Control": "public, max-age=31536000, immutable",
    }


def requester_of(request: web.Request) -> str:
    """Who starts the downloads this request needs: its login, else its address (an
    IPv6 client's /64). X-Forwarded-For is not believed: anyone can send it."""
    subject = request.get(SUBJECT)
    if subject and subject != ANONYMOUS:
        return f"client {subject}"
    return f"address {client_address(request.remote)}"


#: Characters of a peer node's name kept for its share (a node's URL is far shorter).
MAX_PEER_NAME = 512


def peer_requester_of(request: web.Request) -> str:
    """Who starts the downloads a peer node's request needs: that node, by the URL it
    names itself with in the query (``node``, covered by the request's signature),
    else its address (a node that does not say). Each node is bounded like a client:
    strangers asking through several nodes cannot take every slot of a blob's owner."""
    node = request.query.get("node", "")[:MAX_PEER_NAME]
    return f"{PEER_REQUESTER}{node or client_address(request.remote)}"


async def send_blob(
    request: web.Request, blobs: BlobService, up: Upstream, route: Route, requester: str = ""
) -> web.StreamResponse:
    """A blob, with ranges, for ``requester`` (a client, or a peer node).

    Given up as soon as the caller's connection is lost, wherever it waits (for a
    fill slot, for a fill's next bytes): a caller that hung up then holds no slot,
    no place in the queue, and is no reader keeping a fill from being abandoned.
    """
    gone = request.get(CONNECTION_GONE)
    answer = _send_blob(request, blobs, up, route, requester)
    if gone is None:
        return await answer
    sent = await _unless_gone(answer, gone)
    # Never sent: the connection is gone (aiohttp drops it quietly).
    return sent if sent is not None else web.Response(status=400)


async def _unless_gone(
    work: Coroutine[Any, Any, web.StreamResponse], gone: asyncio.Future[None]
) -> web.StreamResponse | None:
    """``work``'s answer, or None (``work`` cancelled) once ``gone`` is done."""
    if gone.done():
        work.close()
        return None
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await _stop(task)
        raise
    if task.done():
        return task.result()
    await _stop(task)
    return None


async def _stop(task: asyncio.Task[web.StreamResponse]) -> None:
    task.cancel()
    # Whatever it raises as it stops has nobody to go to.
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _send_blob(
    request: web.Request, blobs: BlobService, up: Upstream, route: Route, requester: str
) -> web.StreamResponse:
    digest = parse_digest(route.reference)
    want = Want(up, route.name, digest, requester)
    bodiless = await _bodiless(request, blobs, want)
    if bodiless is not None:
        return bodiless
    wanted = parse_range(request.headers.get("Range"))
    if wanted is not None and not range_applies(request.headers, digest_tag(str(digest))):
        # If-Range names another validator (section 13.1.5): the whole blob, 200.
        wanted = None
    first = wanted.first if wanted is not None and wanted.first is not None else 0
    async with blobs.open(want, first) as body:
        if body.location is not None:
            return await _redirect(body, wanted, str(digest))
        size = await body.size()
        if size is None:
            if wanted is None:
                # No length announced: stream chunked as the bytes land.
                resp = web.StreamResponse(status=200, headers=blob_headers(str(digest)))
                resp.enable_chunked_encoding()
                await resp.prepare(request)
                first_byte(request, "blob", body.origin)
                return await _send(request, resp, body, 0, None, str(digest))
            # Ranges need the length: wait for the whole blob.
            size = await body.final_size()
        status, start, end = _plan(wanted, size)
        resp = web.StreamResponse(status=status, headers=blob_headers(str(digest)))
        if status == 206:
            resp.headers["Content-Range"] = content_range(start, end, size)
        resp.content_length = end - start + 1
        await resp.prepare(request)
        first_byte(request, "blob", body.origin)
        return await _send(request, resp, body, start, end, str(digest))


async def _bodiless(
    request: web.Request, blobs: BlobService, want: Want
) -> web.StreamResponse | None:
    """The answer to a HEAD, or to a GET its preconditions answer (304, 412); None
    for a GET that sends the blob."""
    headers = blob_headers(str(want.digest))
    outcome = Preconditions.of(request.headers).evaluate(digest_tag(str(want.digest)))
    if outcome is not Outcome.SERVE:
        # The answer without the conditions comes first (RFC 9110 section 13.2.1):
        # the links rule and the blob's existence, asked as a HEAD asks them. So a
        # 304 starts no download, and a digest named under a repository that may not
        # have it gets the same refusal as without the header.
        await blobs.size(want)
        return conditional_answer(outcome, headers)
    if request.method == "HEAD":
        headers["Content-Length"] = str(await blobs.size(want))
        return web.Response(status=200, headers=headers)
    return None


async def _redirect(body: Delivery, wanted: ByteRange | None, digest: str) -> web.StreamResponse:
    """307 to the shared tier (redirect mode): the client fetches the bytes there,
    with its Range if it sent one (RFC 9110 section 15.4.8: the method and the
    request are kept). An If-Range goes along too; the bucket's own ETag is not the
    digest, so what the bucket makes of it is the bucket's (its answer, 206 or the
    whole object, is one a client handles)."""
    assert body.location is not None
    _, start, end = _plan(wanted, await body.final_size())
    body.sent = end - start + 1
    headers = {
        "Location": body.location,
        "Docker-Content-Digest": digest,
        # The signed URL expires: no cache may keep the redirect.
        "Cache-Control": "no-store",
    }
    return web.Response(status=307, headers=headers)


def _plan(wanted: ByteRange | None, size: int) -> tuple[int, int, int]:
    """(status, start, end inclusive) for a blob of ``size`` bytes; raises 416."""
    if wanted is None:
        return 200, 0, size - 1
    start, end = wanted.resolve(size)
    return 206, start, end


async def _send(
    request: web.Request,
    resp: web.StreamResponse,
    body: Delivery,
    start: int,
    end: int | None,
    digest: str,
) -> web.StreamResponse:
    try:
        await body.send(ResponseSink(request, resp, request.get(SEND_RATE)), start, end)
    except RegistryError as err:
        # Before ConnectionError: an UpstreamUnavailable is one too (errors.py).
        # Headers are gone: the only honest signal left is a broken connection.
        log.warning("aborting %s for a client: %s", digest, err.message)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        pass  # the client went away; a fill goes on without it
    # aiohttp finishes a returned response (write_eof), quietly if the client is gone.
    return resp
