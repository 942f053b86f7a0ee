"""The referrers of a manifest (distribution-spec 1.1, "Listing Referrers"):
signatures, SBOMs, attestations, SOCI indexes, as an image index.

An upstream with the API answers ``GET /v2/<name>/referrers/<digest>`` (all its
pages are read, through its own ``Link``s on its own host). One without it (404,
like distribution 2.8 and Docker Hub today) keeps them under the referrers tag
schema: the tag ``<alg>-<hex>`` holds an index of them, read here through the
manifest service like any tag. Both are read and merged when the API answers, as
clients that write one or the other (cosign, notation, oras) leave them split.

The list is mutable like a tag: kept per (upstream, repository, subject, filter),
served for ``referrers_ttl``, then asked again by one request while the others wait;
on an upstream's 429 or 5xx, and offline, the last list is served for up to
``max_stale``. Nothing known and nothing to ask: an empty index, as a registry with
the API answers (never 404). What the API lists, the upstream vouched for under
the repository (its own answer, like a tag): those digests are linked there. What
the tag schema's index names is a manifest's content, a hint only (links.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import BadRequest, ManifestUnknown, TooManyRequests, UpstreamUnavailable
from ..links import Links
from ..numbers import parse_digits
from ..oci import OCI_INDEX, Digest, is_digest
from ..singleflight import SingleFlight
from ..store.index import Index
from ..upstream.client import Upstream, error_for_status, pull_scope, read_bounded
from .listing import NextPage
from .service import ManifestService

log = logging.getLogger(__name__)

# Pages of an upstream's answer read at most, and descriptors kept of one subject:
# a few signatures, SBOMs and attestations each is usual; thousands is an attack.
MAX_UPSTREAM_PAGES = 16
MAX_REFERRERS = 4096
# Descriptors one answer of this proxy carries unless the client asks for fewer.
PAGE = 1000
# The longest artifactType (a media type: RFC 6838 caps each half at 127).
MAX_TYPE = 255

Descriptor = dict[str, Any]
# (upstream, repository, subject, filter) -> the list: one revalidation at a time.
Revalidations = SingleFlight[tuple[str, str, str, str], "Listing"]


@dataclass(frozen=True, slots=True)
class Listing:
    """A subject's referrers as last asked, and whether the filter was applied to
    them (by the upstream, or here)."""

    descriptors: tuple[Descriptor, ...]
    checked_at: float
    filtered: bool = False


@dataclass(frozen=True, slots=True)
class ReferrersPage:
    body: bytes
    link: str | None
    #: ``OCI-Filters-Applied: artifactType`` is set (the filter was applied).
    filtered: bool


@dataclass(frozen=True, slots=True)
class ReferrersOptions:
    ttl: float = 60.0
    max_stale: float = 7 * 24 * 3600.0
    limit: int = 4 * 1024 * 1024
    offline: bool = False


class Referrers:
    """Referrers lists for clients, kept and revalidated like tags."""

    def __init__(
        self,
        index: Index,
        manifests: ManifestService,
        links: Links,
        options: ReferrersOptions,
        flights: Revalidations,
        clock: Callable[[], float],
    ) -> None:
        self._index = index
        self._manifests = manifests
        self._links = links
        self._options = options
        self._flights = flights
        self._clock = clock

    async def page(
        self, up: Upstream, repo: str, subject: Digest, query: Mapping[str, str], named: NextPage
    ) -> ReferrersPage:
        """One page of ``subject``'s referrers under (``up``, ``repo``), filtered by the
        query's ``artifactType``; ``named``: how the request named the registry."""
        wanted = query.get("artifactType") or None
        if wanted is not None and len(wanted) > MAX_TYPE:
            raise BadRequest("artifactType is too long")
        n = PAGE
        if "n" in query:
            parsed = parse_digits(query["n"], 6)
            if parsed is None:
                raise BadRequest("n must be a non-negative integer")
            n = min(parsed, PAGE)
        listing = await self.listing(up, repo, subject, wanted)
        found = list(listing.descriptors)
        last = query.get("last")
        if last is not None:
            # The page after the descriptor ``last`` names (this proxy's own cursor).
            at = next((i for i, d in enumerate(found) if d.get("digest") == last), None)
            found = found[at + 1 :] if at is not None else []
        link = None
        if len(found) > n:
            found = found[:n]
            extra = {"artifactType": wanted} if wanted else {}
            link = named.link(str(found[-1]["digest"]) if found else "", str(n), extra)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}).encode()
        return ReferrersPage(body, link, listing.filtered)

    async def listing(
        self, up: Upstream, repo: str, subject: Digest, wanted: str | None
    ) -> Listing:
        """``subject``'s referrers (filtered by ``wanted``), from memory while fresh."""
        key = (up.name, repo, str(subject), wanted or "")
        kept = await self._kept(key)
        if kept is not None and self._clock() - kept.checked_at < self._options.ttl:
            return kept
        every = None
        if wanted is not None:
            # A fresh list of all of them answers a filtered request without asking.
            every = await self._kept((up.name, repo, str(subject), ""))
            if every is not None and self._clock() - every.checked_at < self._options.ttl:
                return _filtered(every, wanted)
        if self._options.offline:
            return await self._offline(up, repo, subject, wanted, kept or every)
        return await self._flights.run(
            key, lambda: self._revalidate(up, repo, subject, wanted, kept)
        )

    async def _offline(
        self, up: Upstream, repo: str, subject: Digest, wanted: str | None, kept: Listing | None
    ) -> Listing:
        """Offline nothing can be asked: the last list however old, else the tag
        schema's index this node holds (an import's, say), else none."""
        if kept is None:
            kept = Listing(_merge(await self._from_tag(up, repo, subject), []), self._clock())
        return _filtered(kept, wanted) if wanted and not kept.filtered else kept

    async def _revalidate(
        self, up: Upstream, repo: str, subject: Digest, wanted: str | None, kept: Listing | None
    ) -> Listing:
        key = (up.name, repo, str(subject), wanted or "")
        try:
            listed, applied = await self._from_api(up, repo, subject, wanted)
            tagged = await self._from_tag(up, repo, subject)
        except (UpstreamUnavailable, TooManyRequests) as exc:
            window = self._options.ttl + self._options.max_stale
            if kept is not None and self._clock() - kept.checked_at < window:
                log.warning("serving the referrers of %s from cache: %s", subject, exc.message)
                return kept
            raise
        if listed:
            # The upstream's own answer under this repository.
            await self._links.add(up.name, repo, [str(d["digest"]) for d in listed])
        merged = _merge(listed, tagged)
        listing = Listing(merged, self._clock(), applied)
        if wanted is not None and not applied:
            listing = _filtered(listing, wanted)
        await self._keep(key, listing)
        return listing

    async def _from_api(
        self, up: Upstream, repo: str, subject: Digest, wanted: str | None
    ) -> tuple[list[Descriptor], bool]:
        """The upstream's referrers API answer, every page of it, and whether it applied
        the filter; ([], False) when it has no such API (404, 400, 405)."""
        path: str | None = f"/v2/{repo}/referrers/{subject}"
        if wanted is not None:
            path = f"{path}?artifactType={quote(wanted, safe='')}"
        found: list[Descriptor] = []
        applied = wanted is not None
        for first in [True] + [False] * (MAX_UPSTREAM_PAGES - 1):
            if path is None:
                break
            resp = await up.request(
                "GET", path, scope=pull_scope(repo), headers={"Accept": OCI_INDEX}
            )
            async with resp:
                if first and resp.status in (400, 404, 405):
                    return [], False  # no API: the tag schema is all there is
                if resp.status != 200:
                    raise error_for_status(resp, ManifestUnknown)
                body = await read_bounded(resp, self._options.limit)
                filters = resp.headers.get("OCI-Filters-Applied", "")
                # Applied only when every page says it was.
                applied = applied and "artifactType" in [f.strip() for f in filters.split(",")]
                path = _next_on_same_host(resp.headers.get("Link"), repo, subject)
            found.extend(descriptors_of(body))
        return found[:MAX_REFERRERS], applied

    async def _from_tag(self, up: Upstream, repo: str, subject: Digest) -> list[Descriptor]:
        """The index under the referrers tag schema's tag (``sha256-<hex>``), if any."""
        tag = f"{subject.algorithm}-{subject.hex}"
        try:
            answer = await self._manifests.manifest(up, repo, tag, [OCI_INDEX], True)
        except ManifestUnknown:
            return []
        return descriptors_of(answer.body or b"")

    async def _kept(self, key: tuple[str, str, str, str]) -> Listing | None:
        raw = await self._index.get_record("referrers\0" + "\0".join(key))
        if not isinstance(raw, tuple) or len(raw) != 3:
            return None
        body, checked_at, filtered = raw
        return Listing(tuple(descriptors_of(body)), float(checked_at), bool(filtered))

    async def _keep(self, key: tuple[str, str, str, str], listing: Listing) -> None:
        body = json.dumps({"manifests": list(listing.descriptors)}).encode()
        value = (body, listing.checked_at, listing.filtered)
        await self._index.set_record("referrers\0" + "\0".join(key), value)


def descriptors_of(body: bytes) -> list[Descriptor]:
    """The well-formed descriptors of an index (the rest are dropped, not trusted)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    items = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return []
    kept: list[Descriptor] = []
    for item in items[:MAX_REFERRERS]:
        if not isinstance(item, dict):
            continue
        digest, media, size = item.get("digest"), item.get("mediaType"), item.get("size")
        if not isinstance(digest, str) or not is_digest(digest):
            continue
        if not isinstance(media, str) or not isinstance(size, int) or isinstance(size, bool):
            continue
        kept.append(item)
    return kept


def _merge(first: list[Descriptor], second: list[Descriptor]) -> tuple[Descriptor, ...]:
    seen: set[str] = set()
    merged: list[Descriptor] = []
    for desc in [*first, *second]:
        if desc["digest"] not in seen and len(merged) < MAX_REFERRERS:
            seen.add(desc["digest"])
            merged.append(desc)
    return tuple(merged)


def _filtered(listing: Listing, wanted: str) -> Listing:
    kept = tuple(d for d in listing.descriptors if d.get("artifactType") == wanted)
    return Listing(kept, listing.checked_at, True)


def _next_on_same_host(link: str | None, repo: str, subject: Digest) -> str | None:
    """The path of an upstream's next page, if its ``Link`` names one of this same
    listing on the upstream's own host (a relative or same-path URL); anything else
    ends the reading (a registry does not send the proxy elsewhere)."""
    if not link:
        return None
    start, end = link.find("<"), link.find(">")
    if start < 0 or end < start or "next" not in link[end + 1 :]:
        return None
    target = urlsplit(link[start + 1 : end])
    if target.scheme or target.netloc:
        return None
    if target.path != f"/v2/{repo}/referrers/{subject}":
        return None
    return target.path + (f"?{target.query}" if target.query else "")
