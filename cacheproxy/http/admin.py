"""The operator's levers on a running node: ``POST /_cacheproxy/refresh`` asks the
upstream what tags name now, whatever their freshness or pin (``cacheproxy refresh``;
a CI step may call it after a push). It is an operator's view (``operator.py``:
loopback, ``[metrics] subjects``, or the metrics listener), never a tenant's.

In a cluster the tag's owner refreshes it (the one revalidation the cluster makes),
and every node then forgets what it knew of the tag, so its next use asks the owner
and gets the owner's signed answer.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from ..errors import BadRequest, RegistryError
from ..manifests.images import repository
from ..oci import parse_ref
from ..peers.cluster import Cluster
from ..store.index import TagKey
from ..upstream.client import Upstream
from .keys import CLUSTER, MANIFESTS, UPSTREAMS

log = logging.getLogger(__name__)

# Images one request may name (the body is bounded by the app's client_max_size).
MAX_IMAGES = 64


async def refresh(request: web.Request) -> web.StreamResponse:
    """``{"images": ["registry/name:tag", ...]}`` -> each with the digest it names now,
    or the error that kept it from being asked."""
    try:
        doc = json.loads(await request.read())
        images = doc["images"]
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BadRequest('expected {"images": ["registry/name:tag", ...]}') from None
    if len(images) > MAX_IMAGES:
        raise BadRequest(f"at most {MAX_IMAGES} images a request")
    answers = [await _refresh_one(request, text) for text in images]
    return web.json_response({"images": answers})


async def _refresh_one(request: web.Request, text: str) -> dict[str, str]:
    try:
        ref = parse_ref(text)
        if ":" in ref.reference:
            raise BadRequest("a digest names the same content forever: nothing to refresh")
        up = request.app[UPSTREAMS].get(ref.host)
        name = repository(up, ref.name)
        digest = await _refreshed(request, up, name, ref.reference)
    except (RegistryError, KeyError) as exc:
        message = exc.message if isinstance(exc, RegistryError) else "not an upstream here"
        return {"image": text[:300], "error": message}
    log.info("refreshed %s: %s", text[:300], digest)
    return {"image": text[:300], "digest": digest}


async def _refreshed(request: web.Request, up: Upstream, name: str, tag: str) -> str:
    manifests = request.app[MANIFESTS]
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        return await manifests.refresh(up, name, tag)
    owners = cluster.candidates(TagKey(up.name, name, tag, ()).owner_key())
    owner = owners[0] if owners else cluster.self_url
    if owners:
        digest = await _owner_refreshes(cluster, owner, up.name, name, tag)
        await manifests.forget(up, name, tag)
    else:
        digest = await manifests.refresh(up, name, tag)
    await _everyone_forgets(cluster, owner, up.name, name, tag)
    return digest


async def _owner_refreshes(cluster: Cluster, owner: str, upstream: str, name: str, tag: str) -> str:
    resp = await cluster.get(owner, f"/refresh/{tag}", {"upstream": upstream, "repo": name}, {})
    async with resp:
        body = await resp.read()
        if resp.status != 200:
            raise RegistryError(f"the tag's owner could not refresh it ({resp.status})")
    digest = json.loads(body).get("digest")
    if not isinstance(digest, str):
        raise RegistryError("the tag's owner answered no digest")
    return digest


async def _everyone_forgets(
    cluster: Cluster, owner: str, upstream: str, name: str, tag: str
) -> None:
    """Every node but the owner drops what it knew of the tag (best effort: a node that
    cannot be reached revalidates at its tag's next expiry, as without a refresh)."""
    for member in cluster.membership.peers():
        if member in (cluster.self_url, owner):
            continue
        try:
            resp = await cluster.get(
                member, f"/forget/{tag}", {"upstream": upstream, "repo": name}, {}
            )
            resp.release()
        except RegistryError as exc:
            log.warning("could not tell %s to forget %s: %s", member, tag, exc.message)
