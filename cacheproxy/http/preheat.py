"""A cluster's preheat: ``POST /_cacheproxy/preheat`` (``cacheproxy prefetch --cluster``)
brings an image's blobs onto each blob's owner and ``copies`` more nodes before a
rollout, so it starts warm on every node it lands on.

For each blob, the owner is asked first (the one node that fetches from outside the
cluster), then the next ``copies`` nodes in the blob's rank all at once, each of
which takes it the way a client's pull would (from the owner and the holders: the
upstream sends every blob once). Each node asked answers on
``GET /_cacheproxy/peer/preheat/<digest>`` with a line of progress a second and a
last line when its copy is verified and kept; the operator's request is answered the
same way, one JSON object a line (NDJSON), for the whole cluster. It is an
operator's endpoint (``operator.py``'s rule). A node's preheat is its own work, held
to ``prefetch_rate`` until a client reads the same blob.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..blobs.source import Want
from ..errors import BadRequest, RegistryError, UpstreamUnavailable
from ..manifests.images import blobs_of, image_manifests, related_manifests
from ..oci import parse_digest, parse_ref
from ..peers.cluster import Cluster
from ..peers.ring import ranked
from ..upstream.client import Upstream
from .keys import BLOBS, CLUSTER, FILLS, MANIFESTS, REFERRERS, STORE, UPSTREAMS

log = logging.getLogger(__name__)

MAX_IMAGES = 64
MAX_COPIES = 16
# Blobs asked at once (each of them of every node it goes to).
AT_ONCE = 4
# Seconds between a node's progress lines (well inside a peer's read timeout).
BEAT = 1.0

#: Where a line of progress goes (the operator's response).
Say = Callable[[dict[str, object]], Awaitable[None]]


async def preheat(request: web.Request) -> web.StreamResponse:
    """``{"images": [...], "copies": N, "platform": "os/arch", "referrers": true}`` ->
    NDJSON progress."""
    try:
        doc = json.loads(await request.read())
        images, copies = doc["images"], int(doc.get("copies", 0))
        platform, referrers = doc.get("platform"), doc.get("referrers", True)
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise TypeError
        if not isinstance(platform, str | None) or not isinstance(referrers, bool):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BadRequest('expected {"images": [...], "copies": N}') from None
    if len(images) > MAX_IMAGES or not 0 <= copies <= MAX_COPIES:
        raise BadRequest(f"at most {MAX_IMAGES} images and {MAX_COPIES} copies")
    out = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await out.prepare(request)

    async def say(line: dict[str, object]) -> None:
        await out.write(json.dumps(line).encode() + b"\n")

    failed = 0
    for text in images:
        try:
            failed += await _image(request, text, copies, platform, referrers, say)
        except (RegistryError, ValueError, KeyError) as exc:
            failed += 1
            await say({"image": text[:300], "error": getattr(exc, "message", str(exc))})
    await say({"done": True, "failed": failed})
    await out.write_eof()
    return out


async def _image(
    request: web.Request,
    text: str,
    copies: int,
    platform: str | None,
    referrers: bool,
    say: Say,
) -> int:
    """Every blob of image ``text`` (and what travels with it) onto its nodes; the
    count of (blob, node) that failed."""
    app = request.app
    ref = parse_ref(text)
    up = app[UPSTREAMS].get(ref.host)
    manifests, name = await image_manifests(app[MANIFESTS], up, ref, platform)
    for digest, _, _ in list(manifests) if referrers else []:
        for related in await related_manifests(app[MANIFESTS], app[REFERRERS], up, name, digest):
            manifests.extend(related.fetched())
    blobs = blobs_of(manifests)
    await say({"image": text[:300], "blobs": len(blobs), "bytes": sum(blobs.values())})
    cluster = app.get(CLUSTER)
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(digest: str) -> int:
        async with gate:
            return await _blob(request, cluster, up, name, digest, copies, say)

    return sum(await asyncio.gather(*(one(d) for d in blobs)))


async def _blob(
    request: web.Request,
    cluster: Cluster | None,
    up: Upstream,
    name: str,
    digest: str,
    copies: int,
    say: Say,
) -> int:
    members = cluster.membership.members() if cluster is not None else []
    nodes = ranked(digest, members)[: 1 + copies] if cluster is not None else []
    self_url = cluster.self_url if cluster is not None else "self"

    async def on(node: str) -> int:
        if node == self_url:
            ok, error = await _here(request, up, name, digest)
        else:
            assert cluster is not None
            ok, error = await _there(cluster, node, up.name, name, digest)
        line: dict[str, object] = {"blob": digest, "node": node, "ok": ok}
        if error:
            line["error"] = error
        await say(line)
        return 0 if ok else 1

    owner, *others = nodes or [self_url]
    # The owner first: it alone fetches from outside the cluster. The copies then all
    # at once: each takes pieces from the owner and from the others as they land.
    failed = await on(owner)
    return failed + sum(await asyncio.gather(*(on(node) for node in others)))


async def _here(request: web.Request, up: Upstream, name: str, digest: str) -> tuple[bool, str]:
    """Bring the blob in on this node, as a client's pull would (the node's own work:
    no client's share is spent)."""
    want = Want(up, name, parse_digest(digest))
    try:
        async with request.app[BLOBS].open(want) as body:
            await body.final_size()
    except RegistryError as exc:
        return False, exc.message
    if not request.app[STORE].exists(want.digest):
        return False, "not kept: the disk is nearly full"
    return True, ""


async def _there(
    cluster: Cluster, node: str, upstream: str, name: str, digest: str
) -> tuple[bool, str]:
    """Have ``node`` bring the blob in; its progress lines, its last line's verdict."""
    try:
        resp = await cluster.get(
            node, f"/preheat/{digest}", {"upstream": upstream, "repo": name}, {}, blob=True
        )
    except UpstreamUnavailable as exc:
        return False, exc.message
    last: dict[str, object] = {}
    async with resp:
        if resp.status != 200:
            return False, f"the node answered {resp.status}"
        try:
            async for raw in resp.content:
                if raw.strip():
                    last = json.loads(raw)
        except (ValueError, OSError) as exc:
            return False, f"the node broke off: {type(exc).__name__}"
    if last.get("ok") is True:
        return True, ""
    return False, str(last.get("error", "the node did not finish"))[:300]


async def preheat_here(
    request: web.Request, up: Upstream, repo: str, digest: str
) -> web.StreamResponse:
    """A peer's ``preheat/<digest>``: bring the blob in through this node's clients'
    chain (its owner and holders first), a line of progress every second, the last
    line the verdict."""
    want = Want(up, repo, parse_digest(digest))
    out = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await out.prepare(request)
    work = asyncio.create_task(_here(request, up, repo, digest))
    try:
        async for line in _beats(request, want, work):
            await out.write(json.dumps(line).encode() + b"\n")
    finally:
        if not work.done():
            work.cancel()
    await out.write_eof()
    return out


async def _beats(
    request: web.Request, want: Want, work: asyncio.Task[tuple[bool, str]]
) -> AsyncIterator[dict[str, object]]:
    fills = request.app[FILLS]
    while True:
        done, _ = await asyncio.wait({work}, timeout=BEAT)
        if done:
            ok, error = work.result()
            yield {"ok": ok, "error": error} if error else {"ok": ok}
            return
        fill = fills.running(want)
        yield {"bytes": fill.progress() if fill is not None else 0}
