"""The peer endpoints: the pull API for other nodes of the cluster, HMAC-signed.

``GET /_cacheproxy/peer/blobs/<digest>?upstream=&repo=`` and
``GET /_cacheproxy/peer/manifests/<reference>?upstream=&repo=``. The answer comes
from this node's peer-facing services: its cache, or its own upstream fill. A
peer's request is never forwarded to another peer, which keeps requests from looping.
A blob goes to a peer as it lands, its last byte not held back: the peer verifies
the whole blob itself before it keeps or serves any of it. The swarm's endpoints,
``pieces`` and ``holding``, are in swarm.py. ``refresh/<tag>`` and ``forget/<tag>``
are an operator's refresh as the cluster carries it (admin.py), ``preheat/<digest>``
its preheat (preheat.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from aiohttp import web

from ..errors import NotFound, Unauthorized
from ..oci import Route, parse_digest, validate_name, validate_tag
from ..peers.cluster import PREFIX
from ..peers.ring import ranked
from ..peers.signing import ANSWER_HEADER, HEADER
from . import handlers, preheat, swarm
from .keys import (
    CLOSE_CONNECTION,
    CLUSTER,
    PEER_BLOBS,
    PEER_MANIFESTS,
    RATES,
    SEND_RATE,
    UPSTREAMS,
)


def manifest_answer(
    upstream: str, repo: str, reference: str, headers: Mapping[str, str]
) -> list[str]:
    """The fields a signed manifest answer covers (by tag or by digest)."""
    return [
        upstream,
        repo,
        reference,
        headers.get("Docker-Content-Digest", ""),
        headers.get("Content-Type", ""),
    ]


def canonical(request: web.Request) -> str:
    """What the peer signed: the path and the sorted query (see Cluster.get)."""
    return f"{request.path}?{urlencode(sorted(request.query.items()))}"


async def peer_request(request: web.Request) -> web.StreamResponse:
    cluster = request.app.get(CLUSTER)
    signature = request.headers.get(HEADER)
    if cluster is None or not cluster.verify_request(request.method, canonical(request), signature):
        # Not a peer of this node: the answer closes the connection, so that a
        # stranger, who reaches the peer listener from any pod, holds none of its
        # connections (kept alive, or reading on a body).
        request[CLOSE_CONNECTION] = True
        if cluster is None:
            raise NotFound("peer mode is off on this node")
        raise Unauthorized("peer requests must be signed with the cluster secret, for this node")
    kind, _, reference = request.path[len(PREFIX) + 1 :].partition("/")
    upload = request.app[RATES].peer_upload
    if upload is not None:
        request[SEND_RATE] = upload  # every byte this node sends a peer, in all
    repo = validate_name(request.query.get("repo", ""))
    up = request.app[UPSTREAMS].get(request.query.get("upstream", ""))
    if kind == "blobs":
        parse_digest(reference)
        route = Route("blob", repo, reference)
        requester = handlers.peer_requester_of(request)
        return await handlers.send_blob(request, request.app[PEER_BLOBS], up, route, requester)
    if kind == "pieces":
        return await swarm.pieces(request, up, repo, reference)
    if kind == "preheat":
        parse_digest(reference)
        return await preheat.preheat_here(request, up, repo, reference)
    if kind == "holding":
        return await swarm.holding(request, cluster, signature or "", up, repo, reference)
    if kind in ("refresh", "forget"):
        validate_tag(reference)
        manifests = request.app[PEER_MANIFESTS]
        if kind == "forget":
            await manifests.forget(up, repo, reference)
            return web.json_response({})
        return web.json_response({"digest": await manifests.refresh(up, repo, reference)})
    if kind == "manifests":
        if ":" in reference:
            parse_digest(reference)
        else:
            validate_tag(reference)
        route = Route("manifest", repo, reference)
        resp = await handlers.send_manifest(request, request.app[PEER_MANIFESTS], up, route)
        # What a tag names, and the media type of any manifest, are not checked by a
        # digest: the asker trusts them only with this node's signature over the
        # request and the answer (the bytes themselves it checks against the digest).
        fields = manifest_answer(up.name, repo, reference, resp.headers)
        resp.headers[ANSWER_HEADER] = cluster.sign_answer(signature or "", fields)
        return resp
    raise NotFound("unknown peer endpoint")


async def cluster_view(request: web.Request) -> web.StreamResponse:
    """Membership, health and, for ``?key=``, the owner choice (``cacheproxy peers``)."""
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        return web.json_response({"peer_mode": False})
    body: dict[str, object] = {
        "peer_mode": True,
        "self": cluster.self_url,
        "members": cluster.membership.health(),
        "stats": vars(cluster.stats),
    }
    key = request.query.get("key")
    if key:
        body["key"] = key
        body["ranking"] = ranked(key, cluster.membership.members())
        body["ask_first"] = cluster.candidates(key)
    return web.json_response(body)
