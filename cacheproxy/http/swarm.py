"""The swarm's peer endpoints (signed like the rest of the peer path, see peer.py).

``GET /_cacheproxy/peer/pieces/<digest>?upstream=&repo=`` with a Range: the bytes
this node holds of the blob, complete or still landing, sent as they land (no byte
held back: the asker verifies the whole blob); 404 when the range's first byte is
neither here nor on its way (no fetch ever starts for it); 429 "busy" with
Retry-After when this node already sends ``swarm.policy.UPLOAD_SLOTS`` ranges. The
links rule applies as on the blob path (the request's upstream and repository).
What the node holds and keeps is ``cacheproxy/swarm/holdings.py``'s.

``GET /_cacheproxy/peer/holding/<digest>?upstream=&repo=&node=&size=&have=&coming=``:
a node tells the digest's owner how far it got (``have`` and ``coming`` are byte
spans, ``swarm.lists.encode_spans``); the answer is the blob's size and the holders the
owner names to it, as JSON, signed over the request's signature, the digest and
the body's sha256: a holder list is not addressed by a digest, so the asker trusts
it only with the owner's signature. It carries node names and byte counts, no
bytes of the blob.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from aiohttp import web

from ..blobs.source import Want
from ..errors import BadRequest, BlobUnknown, TooManyRequests
from ..numbers import parse_digits
from ..oci import Route, parse_digest
from ..peers.cluster import Cluster
from ..peers.signing import ANSWER_HEADER
from ..ranges import parse_range
from ..swarm.lists import HolderReport, encode_list
from ..upstream.client import Upstream
from . import handlers
from .keys import HOLDINGS, PEER_PIECES

# What a refused asker is told: try again in a second at most (it asks another
# holder at once and this one after a short pause; RFC 9110 section 10.2.3).
RETRY_AFTER = "1"
MAX_NODE_URL = 512


async def pieces(
    request: web.Request, up: Upstream, repo: str, reference: str
) -> web.StreamResponse:
    holdings = request.app.get(HOLDINGS)
    if holdings is None:
        raise BlobUnknown("this node does not serve pieces")
    digest = parse_digest(reference)
    want = Want(up, repo, digest)
    wanted = parse_range(request.headers.get("Range"))
    first = wanted.first if wanted is not None and wanted.first is not None else 0
    # The pair's rule before anything tells what is here (held, busy or not).
    await holdings.vouch(want)
    # A swarm reads a fill here piece by piece: asking keeps it from being abandoned.
    holdings.asked(want)
    if not holdings.offers(want, first):
        raise BlobUnknown("this node neither holds nor is receiving that range")
    length = (
        wanted.last - first + 1
        if wanted is not None and wanted.first is not None and wanted.last is not None
        else 1 << 62
    )
    if not holdings.uploads.take(length):
        raise TooManyRequests(
            "busy: this node sends as many ranges as it may", headers={"Retry-After": RETRY_AFTER}
        )
    # Who asks (its URL as members know it): the owner names the range as coming
    # there to the next asker at once.
    node = request.query.get("node", "")[:MAX_NODE_URL]
    end = first + length if wanted is not None and wanted.last is not None else first
    try:
        with holdings.sending(want, node, first, end):
            route = Route("blob", repo, reference)
            return await handlers.send_blob(request, request.app[PEER_PIECES], up, route)
    finally:
        holdings.uploads.give(length)


async def holding(
    request: web.Request,
    cluster: Cluster,
    signature: str,
    up: Upstream,
    repo: str,
    reference: str,
) -> web.StreamResponse:
    holdings = request.app.get(HOLDINGS)
    if holdings is None:
        raise BlobUnknown("this node keeps no holder lists")
    digest = parse_digest(reference)
    query = request.query
    node = query.get("node", "")
    parts = urlsplit(node)
    if len(node) > MAX_NODE_URL or parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest("node: expected this peer's URL")
    size_text = query.get("size", "")
    size = parse_digits(size_text) if size_text else None
    if size_text and size is None:
        raise BadRequest("size: expected a byte count")
    try:
        report = HolderReport.parse(node, query.get("have", ""), query.get("coming", ""), size)
    except ValueError as exc:
        raise BadRequest(f"have/coming: {exc}") from None
    # The fill it may start here is that node's, bounded like a client's.
    want = Want(up, repo, digest, handlers.peer_requester_of(request))
    known, named = await holdings.holding(want, report, size)
    body = encode_list(known, named)
    fields = [str(digest), hashlib.sha256(body).hexdigest()]
    headers = {ANSWER_HEADER: cluster.sign_answer(signature, fields)}
    return web.Response(body=body, content_type="application/json", headers=headers)
