"""Lists under a repository: its tags, and a manifest's referrers (distribution-spec
1.1), each a page at a time with a ``Link`` to the next that names the registry as
the request did."""

from __future__ import annotations

from aiohttp import web

from ..manifests.listing import NextPage
from ..oci import OCI_INDEX, Route, parse_digest
from ..upstream.client import Upstream
from .keys import REFERRERS, TAG_LISTS


async def tags(
    request: web.Request, up: Upstream, route: Route, named: NextPage
) -> web.StreamResponse:
    """A page of tags; its ``Link`` names the registry as the request did (``named``)."""
    page = await request.app[TAG_LISTS].page(up, route.name, dict(request.query), named)
    headers = {"Link": page.link} if page.link else {}
    return web.Response(body=page.body, content_type=page.content_type, headers=headers)


async def referrers(
    request: web.Request, up: Upstream, route: Route, named: NextPage
) -> web.StreamResponse:
    """A page of a manifest's referrers, as an image index (distribution-spec 1.1,
    "Listing Referrers"); ``OCI-Filters-Applied`` says an artifactType filter was."""
    subject = parse_digest(route.reference)
    page = await request.app[REFERRERS].page(up, route.name, subject, request.query, named)
    headers = {"Content-Type": OCI_INDEX}
    if page.link:
        headers["Link"] = page.link
    if page.filtered:
        headers["OCI-Filters-Applied"] = "artifactType"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(page.body))
        return web.Response(status=200, headers=headers)
    return web.Response(body=page.body, headers=headers)
