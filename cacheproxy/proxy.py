"""The pull-through service: manifests and blobs from the cache, else from upstream.

The HTTP layer calls in here with validated names, references and digests; this
module decides what comes from disk, what from a running fill and what from the
upstream, and never knows about client sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlencode, urlsplit

import aiohttp

from .accounting import Accounting, NullAccounting, Source
from .config import Config
from .errors import (
    BadRequest,
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    TooManyRequests,
    UpstreamBadContent,
    UpstreamUnavailable,
)
from .fill import Fill, Fills
from .oci import (
    MANIFEST_TYPES,
    Digest,
    accepted_manifest_types,
    digest_of,
    manifest_media_type,
    parse_digest,
)
from .singleflight import SingleFlight
from .store.blobs import BlobStore, OpenBlob
from .store.index import Index, TagEntry, TagKey
from .upstream.client import Upstream, error_for_status
from .upstream.pool import UpstreamPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest answer: body is None for HEAD."""

    digest: str
    media_type: str
    size: int
    body: bytes | None
    # "upstream" when this request's own upstream GET brought the body, else "cache".
    source: Source = "cache"


@dataclass(frozen=True, slots=True)
class TagPage:
    body: bytes
    content_type: str
    link: str | None


def scope_for(name: str) -> str:
    return f"repository:{name}:pull"


class Proxy:
    """Manifest resolution and blob sourcing for every upstream."""

    def __init__(
        self,
        config: Config,
        store: BlobStore,
        index: Index,
        fills: Fills,
        upstreams: UpstreamPool,
        clock: Callable[[], float] = time.time,
        accounting: Accounting | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.index = index
        self.fills = fills
        self.upstreams = upstreams
        self._clock = clock
        self.accounting: Accounting = accounting or NullAccounting()
        self._resolving: SingleFlight[TagKey, tuple[TagEntry, bool]] = SingleFlight()
        self._fetching: SingleFlight[str, bytes] = SingleFlight()

    def upstream(self, name: str | None = None) -> Upstream:
        """The upstream for a registry host (None: the default); DENIED if unknown."""
        return self.upstreams.get(name)

    async def check_ready(self) -> list[str]:
        """What keeps the proxy from serving, if anything (for /readyz)."""
        problems = []
        if not await asyncio.to_thread(self.store.writable):
            problems.append(f"cache directory {self.store.root} is not writable")
        if not await self.index.ping():
            problems.append("metadata index does not answer")
        return problems

    async def close(self) -> None:
        await self._resolving.close()
        await self._fetching.close()

    # --- manifests -------------------------------------------------------------

    async def manifest(
        self, up: Upstream, name: str, reference: str, accept: list[str], want_body: bool
    ) -> Manifest:
        admitted = accepted_manifest_types(accept)
        if not admitted:
            raise ManifestUnknown("no manifest media type in the request's Accept is served")
        if ":" in reference:
            return await self._by_digest(up, name, parse_digest(reference), admitted, want_body)
        key = TagKey(up.name, name, reference, admitted)
        entry, fetched = await self._tag_entry(up, key, want_body)
        body = None
        if want_body:
            body, fetched_body = await self._manifest_body(up, name, parse_digest(entry.digest))
            fetched = fetched or fetched_body
        source: Source = "upstream" if fetched else "cache"
        return Manifest(entry.digest, entry.media_type, entry.size, body, source)

    async def _by_digest(
        self,
        up: Upstream,
        name: str,
        digest: Digest,
        admitted: tuple[str, ...],
        want_body: bool,
    ) -> Manifest:
        body, fetched = await self._manifest_body(up, name, digest)
        media_type = await self.index.get_manifest_type(str(digest))
        if media_type is None:
            media_type = manifest_media_type(body, None)
            await self.index.set_manifest_type(str(digest), media_type)
        if media_type not in admitted:
            raise ManifestUnknown(
                f"manifest is {media_type}, which the request's Accept does not admit"
            )
        source: Source = "upstream" if fetched else "cache"
        body_out = body if want_body else None
        return Manifest(str(digest), media_type, len(body), body_out, source)

    async def _manifest_body(self, up: Upstream, name: str, digest: Digest) -> tuple[bytes, bool]:
        """The manifest's bytes, and whether this call's own upstream GET fetched them."""
        body = await asyncio.to_thread(self.store.read, digest)
        if body is not None:
            return body, False
        return await self._fetching.run_leading(
            str(digest), lambda: self._fetch_manifest_by_digest(up, name, digest)
        )

    async def _fetch_manifest_by_digest(self, up: Upstream, name: str, digest: Digest) -> bytes:
        resp = await up.request(
            "GET",
            f"/v2/{name}/manifests/{digest}",
            scope=scope_for(name),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        async with resp:
            if resp.status != 200:
                raise error_for_status(resp, ManifestUnknown)
            body = await self._read_manifest(resp)
            header_type = resp.headers.get("Content-Type")
        if digest_of(body, digest.algorithm) != digest:
            raise UpstreamBadContent("upstream manifest does not match its digest")
        await self._keep_manifest(up, name, digest, body, manifest_media_type(body, header_type))
        return body

    async def _keep_manifest(
        self, up: Upstream, name: str, digest: Digest, body: bytes, media_type: str
    ) -> None:
        self.accounting.fetched(up.name, name, "manifest", len(body))
        await asyncio.to_thread(self.store.put, digest, body)
        await self.index.set_manifest_type(str(digest), media_type)

    async def _read_manifest(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.config.max_manifest_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise UpstreamBadContent("upstream manifest exceeds the size limit")
        try:
            body = await resp.content.read(limit + 1)
            while len(body) <= limit:
                more = await resp.content.read(limit + 1 - len(body))
                if not more:
                    break
                body += more
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable("upstream broke off a manifest") from exc
        if len(body) > limit:
            raise UpstreamBadContent("upstream manifest exceeds the size limit")
        return body

    async def _tag_entry(self, up: Upstream, key: TagKey, want_body: bool) -> tuple[TagEntry, bool]:
        """The tag's entry, and whether this call's own upstream GET fetched its body."""
        entry = await self.index.get_tag(key)
        now = self._clock()
        if entry is not None and now - entry.checked_at < self.config.tag_ttl:
            return entry, False
        (fresh, fetched), leader = await self._resolving.run_leading(
            key, lambda: self._revalidate(up, key, entry, want_body)
        )
        return fresh, fetched and leader

    async def _revalidate(
        self, up: Upstream, key: TagKey, entry: TagEntry | None, want_body: bool
    ) -> tuple[TagEntry, bool]:
        """Ask upstream what the tag names now: HEAD when we know a digest (Docker Hub
        does not count a HEAD as a pull), GET when we know nothing and need the body.
        The flag says whether a GET brought the body."""
        try:
            if entry is not None or not want_body:
                fresh = await self._head_tag(up, key)
                if fresh is not None:
                    if entry is not None and fresh.digest == entry.digest:
                        fresh = replace(entry, checked_at=fresh.checked_at)
                    await self.index.set_tag(key, fresh)
                    return fresh, False
            fresh = await self._get_tag(up, key)
        except (UpstreamUnavailable, TooManyRequests) as exc:
            if entry is not None and self._clock() - entry.checked_at < (
                self.config.tag_ttl + self.config.max_stale
            ):
                log.warning(
                    "serving %s/%s:%s from cache: upstream failed (%s)",
                    key.upstream,
                    key.name,
                    key.tag,
                    exc.message,
                )
                return entry, False
            raise
        await self.index.set_tag(key, fresh)
        return fresh, True

    async def _head_tag(self, up: Upstream, key: TagKey) -> TagEntry | None:
        """HEAD the tag upstream; None when the answer lacks what a TagEntry needs."""
        resp = await up.request(
            "HEAD",
            f"/v2/{key.name}/manifests/{key.tag}",
            scope=scope_for(key.name),
            headers={"Accept": ", ".join(key.accept)},
        )
        async with resp:
            if resp.status != 200:
                raise error_for_status(resp, ManifestUnknown)
            digest = resp.headers.get("Docker-Content-Digest", "")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            size = resp.content_length
        try:
            parse_digest(digest)
        except DigestInvalid:
            return None
        if media_type not in key.accept or size is None:
            return None
        return TagEntry(digest, media_type, size, self._clock())

    async def _get_tag(self, up: Upstream, key: TagKey) -> TagEntry:
        resp = await up.request(
            "GET",
            f"/v2/{key.name}/manifests/{key.tag}",
            scope=scope_for(key.name),
            headers={"Accept": ", ".join(key.accept)},
        )
        async with resp:
            if resp.status != 200:
                raise error_for_status(resp, ManifestUnknown)
            body = await self._read_manifest(resp)
            header_digest = resp.headers.get("Docker-Content-Digest")
            header_type = resp.headers.get("Content-Type")
        digest = digest_of(body)
        if header_digest:
            try:
                claimed = parse_digest(header_digest)
            except DigestInvalid as exc:
                raise UpstreamBadContent("upstream sent a malformed manifest digest") from exc
            digest = digest_of(body, claimed.algorithm)
            if digest != claimed:
                raise UpstreamBadContent("upstream manifest does not match its digest")
        media_type = manifest_media_type(body, header_type)
        if media_type not in key.accept:
            raise ManifestUnknown(
                f"upstream holds a {media_type} for this tag, which the Accept does not admit"
            )
        await self._keep_manifest(up, key.name, digest, body, media_type)
        return TagEntry(str(digest), media_type, len(body), self._clock())

    # --- blobs -----------------------------------------------------------------

    def open_blob(self, up: Upstream, name: str, digest: Digest) -> tuple[OpenBlob | Fill, Source]:
        """A complete cached blob, or the fill bringing it in (joined or new), and
        where the client's bytes come from ("upstream" only for the fill's starter)."""
        blob = self.store.open(digest)
        if blob is not None:
            return blob, "cache"

        async def opener(offset: int) -> aiohttp.ClientResponse:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            resp = await up.request(
                "GET", f"/v2/{name}/blobs/{digest}", scope=scope_for(name), headers=headers
            )
            if resp.status not in (200, 206):
                err = error_for_status(resp, BlobUnknown)
                resp.release()
                raise err
            return resp

        fill, started = self.fills.join_or_start(digest, opener, up.name, name)
        if fill is None:  # completed between the two checks
            blob = self.store.open(digest)
            if blob is None:
                raise BlobUnknown()
            return blob, "cache"
        return fill, "upstream" if started else "cache"

    async def blob_size(self, up: Upstream, name: str, digest: Digest) -> int:
        """The size of a blob for HEAD, without starting a fill."""
        size = self.store.size(digest)
        if size is not None:
            return size
        fill = self.fills.get(digest)
        if fill is not None:
            await fill.started()
            if fill.size is not None:
                return fill.size
        resp = await up.request("HEAD", f"/v2/{name}/blobs/{digest}", scope=scope_for(name))
        async with resp:
            if resp.status != 200:
                raise error_for_status(resp, BlobUnknown)
            if resp.content_length is None:
                raise UpstreamUnavailable("upstream did not say the blob's size")
            return resp.content_length

    # --- tags ------------------------------------------------------------------

    async def tags(self, up: Upstream, name: str, query: dict[str, str]) -> TagPage:
        """List tags, paginated as the spec says even when the upstream ignores ``n``."""
        n: int | None = None
        if "n" in query:
            raw = query["n"]
            if not raw.isdigit() or len(raw) > 6:
                raise BadRequest("n must be a non-negative integer", detail={"n": raw[:20]})
            n = int(raw)
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
        resp = await up.request("GET", path, scope=scope_for(name))
        async with resp:
            if resp.status != 200:
                raise error_for_status(resp, NameUnknown)
            body = await self._read_manifest(resp)
            link = _local_link(resp.headers.get("Link"))
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


def _local_link(link: str | None) -> str | None:
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


__all__ = ["Manifest", "Proxy", "RegistryError", "TagPage"]
