"""Tag lists, paginated as the spec says ("Listing Tags") even when the upstream
ignores ``n`` and ``last`` (distribution 2.8 does)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from ..errors import BadRequest, NameUnknown, UpstreamBadContent
from ..numbers import parse_digits
from ..upstream.client import Upstream, error_for_status, pull_scope, read_bounded


@dataclass(frozen=True, slots=True)
class TagPage:
    body: bytes
    content_type: str
    link: str | None


class TagLister:
    """Relays an upstream's tag list, one spec page at a time."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    async def page(self, up: Upstream, name: str, query: dict[str, str]) -> TagPage:
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
            if len(last) > 256:
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
            link = local_link(resp.headers.get("Link"))
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
            following = urlencode({"last": page[-1], "n": str(n)}) if page else ""
            link = f'</v2/{name}/tags/list?{following}>; rel="next"'
        out = json.dumps({"name": doc.get("name", name), "tags": page}).encode()
        return TagPage(out, "application/json", link)


def local_link(link: str | None) -> str | None:
    """Point an upstream ``Link: <url>; rel="next"`` at this proxy (path and query only)."""
    if not link:
        return None
    start, end = link.find("<"), link.find(">")
    if start < 0 or end < start:
        return None
    target = urlsplit(link[start + 1 : end])
    if not target.path.startswith("/v2/"):
        return None
    local = target.path + (f"?{target.query}" if target.query else "")
    return f"<{local}>{link[end + 1 :]}"
