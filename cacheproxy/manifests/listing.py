"""Tag lists, paginated as the spec says ("Listing Tags") even when the upstream
ignores ``n`` and ``last`` (distribution 2.8 does)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from ..errors import BadRequest, NameUnknown, UpstreamBadContent
from ..numbers import parse_digits
from ..upstream.client import Upstream, error_for_status, pull_scope, read_bounded

# The longest ``last`` a request (or an upstream's link) may carry.
MAX_LAST = 256


@dataclass(frozen=True, slots=True)
class TagPage:
    body: bytes
    content_type: str
    link: str | None


@dataclass(frozen=True, slots=True)
class NextPage:
    """How the request named its registry and repository, so that the next page's
    ``Link`` names them the same way: the path's name (with the registry host first,
    as CRI-O and podman send it, or without) and the ``ns`` it carried (containerd).

    The link is this proxy's own path, never an upstream's URL, and always names the
    registry the page came from: a link that dropped it would send the client's next
    request to the default upstream, where anyone may have pushed tags.
    """

    path_name: str
    ns: str | None = None
    #: The endpoint under the repository: the tag list, or a manifest's referrers.
    endpoint: str = "tags/list"

    def link(self, last: str, n: str | None, extra: Mapping[str, str] | None = None) -> str:
        query = {"last": last}
        if n is not None:
            query["n"] = n
        query.update(extra or {})
        if self.ns is not None:
            query["ns"] = self.ns
        path = quote(f"/v2/{self.path_name}/{self.endpoint}", safe="/:[]")
        return f'<{path}?{urlencode(query)}>; rel="next"'

    def from_upstream(self, link: str | None) -> str | None:
        """The upstream's ``Link: <url>; rel="next"`` as this proxy's own: only its
        ``last`` and ``n`` are kept (what :meth:`TagLister.page` forwards)."""
        if not link:
            return None
        start, end = link.find("<"), link.find(">")
        if start < 0 or end < start or "next" not in link[end + 1 :]:
            return None
        target = urlsplit(link[start + 1 : end])
        if not target.path.startswith("/v2/"):
            return None
        query = dict(parse_qsl(target.query))
        last = query.get("last")
        if last is None or len(last) > MAX_LAST:
            return None
        # The upstream's n is relayed only as ASCII digits (RFC 5234 DIGIT), as a
        # request's n is read: isdigit() is true of "\u00b2", which the client's next
        # request would then carry, and be refused for (400).
        n = parse_digits(query.get("n") or "", 6)
        return self.link(last, str(n) if n is not None else None)


class TagLister:
    """Relays an upstream's tag list, one spec page at a time."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    async def page(
        self, up: Upstream, name: str, query: dict[str, str], named: NextPage
    ) -> TagPage:
        """A page of ``name``'s tags at ``up``; ``named``: how the request named them."""
        n: int | None = None
        if "n" in query:
            raw = query["n"]
            # ASCII digits only: isdigit() is true of "\u00b2", which int() refuses.
            n = parse_digits(raw, 6)
            if n is None:
                raise BadRequest("n must be a non-negative integer", detail={"n": raw[:20]})
        last = query.get("last")
        params = {}
        if n is not None:
            params["n"] = str(n)
        if last is not None:
            if len(last) > MAX_LAST:
                raise BadRequest("last is too long")
            params["last"] = last
        path = f"/v2/{name}/tags/list"
        if params:
            path += "?" + urlencode(params)
        resp = await up.request("GET", path, scope=pull_scope(name))
        async with resp:
            if resp.status != 200:
                raise error_for_status(resp, NameUnknown)
            body = await read_bounded(resp, self._limit)
            link = named.from_upstream(resp.headers.get("Link"))
        try:
            doc = json.loads(body)
            tags = doc["tags"] or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise TypeError
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamBadContent("upstream sent a malformed tag list") from exc
        # Spec ("Listing Tags"): lexical order, only tags after `last`, at most `n`.
        page = sorted(t for t in tags if last is None or t > last)
        if n is not None and len(page) > n:
            page = page[:n]
            link = named.link(page[-1], str(n)) if page else None
        out = json.dumps({"name": doc.get("name", name), "tags": page}).encode()
        return TagPage(out, "application/json", link)
