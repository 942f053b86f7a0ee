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
from collections import OrderedDict
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
from .fill import BlobSource, Fill, Fills
from .oci import (
    MANIFEST_TYPES,
    Digest,
    accepted_manifest_types,
    digest_of,
    manifest_media_type,
    parse_digest,
)
from .peers.cluster import Cluster, PeerChain
from .singleflight import SingleFlight
from .store.access import AccessLog
from .store.blobs import BlobStore, OpenBlob
from .store.index import Index, TagEntry, TagKey
from .store.maintenance import parse_size
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


MANIFEST_MEMORY = 64 * 1024 * 1024


class ByteLRU:
    """Least recently used ``bytes`` values, bounded by their total size."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if key in self._items or len(value) > self._capacity // 16:
            return
        self._items[key] = value
        self._size += len(value)
        while self._size > self._capacity:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)


class NoRoom(Exception):
    """The disk is too full to cache a miss: stream it through instead."""


class UpstreamBlob:
    """A blob straight from its upstream registry."""

    label: Source = "upstream"

    def __init__(self, up: Upstream, name: str, digest: Digest) -> None:
        self._up, self._name, self._digest = up, name, digest

    async def open(self, offset: int) -> aiohttp.ClientResponse:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = await self._up.request(
            "GET",
            f"/v2/{self._name}/blobs/{self._digest}",
            scope=scope_for(self._name),
            headers=headers,
        )
        if resp.status not in (200, 206):
            err = error_for_status(resp, BlobUnknown)
            resp.release()
            raise err
        return resp

    def blame(self) -> None:
        return None


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
        cluster: Cluster | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.index = index
        self.fills = fills
        self.upstreams = upstreams
        self._clock = clock
        self.accounting: Accounting = accounting or NullAccounting()
        self.cluster = cluster
        self.access = AccessLog()
        # Manifests are small, immutable and hot: keep recent ones in memory.
        self._bodies = ByteLRU(MANIFEST_MEMORY)
        self.passthroughs = 0
        self._min_free = parse_size(config.min_free, store.total_bytes())
        # Keyed with "asks peers" too: see _asks_peers.
        self._resolving: SingleFlight[tuple[TagKey, bool], tuple[TagEntry, Source | None]] = (
            SingleFlight()
        )
        self._fetching: SingleFlight[tuple[str, bool], tuple[bytes, Source]] = SingleFlight()

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
        self,
        up: Upstream,
        name: str,
        reference: str,
        accept: list[str],
        want_body: bool,
        local_only: bool = False,
    ) -> Manifest:
        """A manifest by tag or digest, as the client's Accept admits.

        ``local_only``: a peer's request, answered from this node's cache or its
        upstream, never forwarded to another peer.
        """
        admitted = accepted_manifest_types(accept)
        if not admitted:
            raise ManifestUnknown("no manifest media type in the request's Accept is served")
        if ":" in reference:
            digest = parse_digest(reference)
            return await self._by_digest(up, name, digest, admitted, want_body, local_only)
        key = TagKey(up.name, name, reference, admitted)
        entry, origin = await self._tag_entry(up, key, want_body, local_only)
        body = None
        if want_body:
            digest = parse_digest(entry.digest)
            body, body_origin = await self._manifest_body(up, name, digest, local_only)
            origin = origin or body_origin
        return Manifest(entry.digest, entry.media_type, entry.size, body, origin or "cache")

    async def _by_digest(
        self,
        up: Upstream,
        name: str,
        digest: Digest,
        admitted: tuple[str, ...],
        want_body: bool,
        local_only: bool,
    ) -> Manifest:
        body, origin = await self._manifest_body(up, name, digest, local_only)
        media_type = await self.index.get_manifest_type(str(digest))
        if media_type is None:
            media_type = manifest_media_type(body, None)
            await self.index.set_manifest_type(str(digest), media_type)
        if media_type not in admitted:
            raise ManifestUnknown(
                f"manifest is {media_type}, which the request's Accept does not admit"
            )
        body_out = body if want_body else None
        return Manifest(str(digest), media_type, len(body), body_out, origin or "cache")

    async def _manifest_body(
        self, up: Upstream, name: str, digest: Digest, local_only: bool
    ) -> tuple[bytes, Source | None]:
        """The manifest's bytes, and where this call's own transfer got them (None:
        the cache, or another request's transfer)."""
        body = self._bodies.get(str(digest))
        if body is None:
            body = await asyncio.to_thread(self.store.read, digest)
        if body is not None:
            self._bodies.put(str(digest), body)
            return body, None
        if self.config.offline:
            raise ManifestUnknown("not in the cache, and the proxy is offline")
        ask_peers = self._asks_peers(str(digest), local_only)
        (body, origin), leader = await self._fetching.run_leading(
            (str(digest), ask_peers),
            lambda: self._fetch_manifest_by_digest(up, name, digest, ask_peers),
        )
        return body, origin if leader else None

    def _asks_peers(self, key: str, local_only: bool) -> bool:
        """Whether this node asks a peer for ``key`` before its upstream. Calls are
        collapsed per this flag: a call that asks peers never absorbs a peer's own
        request, which could otherwise end up waiting on itself."""
        return self.cluster is not None and not local_only and bool(self.cluster.candidates(key))

    async def _fetch_manifest_by_digest(
        self, up: Upstream, name: str, digest: Digest, ask_peers: bool
    ) -> tuple[bytes, Source]:
        if self.cluster is not None and ask_peers:
            for peer in self.cluster.candidates(str(digest)):
                found = await self._manifest_from_peer(peer, up, name, str(digest), MANIFEST_TYPES)
                if found is not None and found[0] == digest:
                    _, body, media_type = found
                    await self._keep_manifest(up, name, digest, body, media_type, "peer")
                    return body, "peer"
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
        media_type = manifest_media_type(body, header_type)
        await self._keep_manifest(up, name, digest, body, media_type, "upstream")
        return body, "upstream"

    async def _keep_manifest(
        self,
        up: Upstream,
        name: str,
        digest: Digest,
        body: bytes,
        media_type: str,
        origin: Source,
    ) -> None:
        if origin == "upstream":
            self.accounting.fetched(up.name, name, "manifest", len(body))
        await asyncio.to_thread(self.store.put, digest, body)
        await self.index.set_manifest_type(str(digest), media_type)

    async def _manifest_from_peer(
        self, peer: str, up: Upstream, name: str, reference: str, accept: tuple[str, ...]
    ) -> tuple[Digest, bytes, str] | None:
        """A manifest from a peer, verified; None when the peer cannot give one (the
        caller then asks the upstream itself)."""
        assert self.cluster is not None
        self.cluster.stats.manifest_requests += 1
        try:
            resp = await self.cluster.get(
                peer,
                f"/manifests/{reference}",
                {"upstream": up.name, "repo": name},
                {"Accept": ", ".join(accept)},
            )
        except UpstreamUnavailable:
            return None
        async with resp:
            if resp.status != 200:
                return None
            try:
                body = await self._read_manifest(resp)
            except RegistryError:
                self.cluster.membership.mark_bad(peer, "broke off a manifest")
                return None
            claimed = resp.headers.get("Docker-Content-Digest", "")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            digest = parse_digest(claimed)
        except DigestInvalid:
            return None
        if digest_of(body, digest.algorithm) != digest or media_type not in accept:
            self.cluster.stats.bad_content += 1
            self.cluster.membership.mark_bad(peer, "sent a manifest that failed verification")
            return None
        return digest, body, media_type

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

    async def _tag_entry(
        self, up: Upstream, key: TagKey, want_body: bool, local_only: bool
    ) -> tuple[TagEntry, Source | None]:
        """The tag's entry, and where this call's own transfer got its body, if any."""
        entry = await self.index.get_tag(key)
        now = self._clock()
        if entry is not None and now - entry.checked_at < self.config.tag_ttl:
            return entry, None
        if self.config.offline:
            return await self._cached_tag(key, entry), None
        ask_peers = self._asks_peers(key.owner_key(), local_only)
        (fresh, origin), leader = await self._resolving.run_leading(
            (key, ask_peers), lambda: self._revalidate(up, key, entry, want_body, ask_peers)
        )
        return fresh, origin if leader else None

    async def _cached_tag(self, key: TagKey, entry: TagEntry | None) -> TagEntry:
        """Offline: the last known resolution, however old, or MANIFEST_UNKNOWN."""
        known = entry or await self.index.get_tag_any(key.upstream, key.name, key.tag)
        if known is None or known.media_type not in key.accept:
            raise ManifestUnknown("not in the cache, and the proxy is offline")
        return known

    async def _revalidate(
        self,
        up: Upstream,
        key: TagKey,
        entry: TagEntry | None,
        want_body: bool,
        ask_peers: bool,
    ) -> tuple[TagEntry, Source | None]:
        """Ask what the tag names now, and say where the body came from (None: no body
        was transferred).

        In a cluster the tag's owner answers, so the upstream sees one revalidation
        per cluster per freshness window. Otherwise the upstream: HEAD when we know a
        digest (Docker Hub does not count a HEAD as a pull), GET when we know nothing
        and need the body.
        """
        if self.cluster is not None and ask_peers:
            for peer in self.cluster.candidates(key.owner_key()):
                found = await self._manifest_from_peer(peer, up, key.name, key.tag, key.accept)
                if found is not None:
                    digest, body, media_type = found
                    await self._keep_manifest(up, key.name, digest, body, media_type, "peer")
                    learned = TagEntry(str(digest), media_type, len(body), self._clock())
                    await self.index.set_tag(key, learned)
                    return learned, "peer"
        try:
            if entry is not None or not want_body:
                fresh = await self._head_tag(up, key)
                if fresh is not None:
                    if entry is not None and fresh.digest == entry.digest:
                        fresh = replace(entry, checked_at=fresh.checked_at)
                    await self.index.set_tag(key, fresh)
                    return fresh, None
            fresh = await self._get_tag(up, key)
        except (UpstreamUnavailable, TooManyRequests) as exc:
            # stale-if-error (RFC 5861's idea): a known tag beats a failed pull.
            known = entry or await self.index.get_tag_any(key.upstream, key.name, key.tag)
            if (
                known is not None
                and known.media_type in key.accept
                and self._clock() - known.checked_at < self.config.tag_ttl + self.config.max_stale
            ):
                log.warning(
                    "serving %s/%s:%s from cache: upstream failed (%s)",
                    key.upstream,
                    key.name,
                    key.tag,
                    exc.message,
                )
                return known, None
            raise
        await self.index.set_tag(key, fresh)
        return fresh, "upstream"

    async def _ask_tag(self, up: Upstream, key: TagKey, method: str) -> aiohttp.ClientResponse:
        """The upstream's 200 answer for the tag, asked with the key's Accept class."""
        resp = await up.request(
            method,
            f"/v2/{key.name}/manifests/{key.tag}",
            scope=scope_for(key.name),
            headers={"Accept": ", ".join(key.accept)},
        )
        if resp.status != 200:
            err = error_for_status(resp, ManifestUnknown)
            resp.release()
            raise err
        return resp

    async def _head_tag(self, up: Upstream, key: TagKey) -> TagEntry | None:
        """HEAD the tag upstream; None when the answer lacks what a TagEntry needs."""
        async with await self._ask_tag(up, key, "HEAD") as resp:
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
        async with await self._ask_tag(up, key, "GET") as resp:
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
        await self._keep_manifest(up, key.name, digest, body, media_type, "upstream")
        return TagEntry(str(digest), media_type, len(body), self._clock())

    # --- blobs -----------------------------------------------------------------

    def open_blob(
        self, up: Upstream, name: str, digest: Digest, local_only: bool = False
    ) -> tuple[OpenBlob | Fill, bool]:
        """A complete cached blob, or the fill bringing it in (joined or new), and
        whether this call started that fill.

        In a cluster the fill asks the digest's owner first (``local_only``: this is
        a peer's request, which is never forwarded again, so it goes upstream).
        """
        blob = self.store.open(digest)
        if blob is not None:
            return blob, False
        if self.fills.get(digest, local_only) is None:
            if self.config.offline:
                raise BlobUnknown("not in the cache, and the proxy is offline")
            if self.store.free_bytes() < self._min_free:
                raise NoRoom(f"less than {self.config.min_free} free in the cache directory")

        def make_source() -> BlobSource:
            direct = UpstreamBlob(up, name, digest)
            if self.cluster is None or local_only:
                return direct
            candidates = self.cluster.candidates(str(digest))
            if not candidates:
                return direct
            return PeerChain(self.cluster, candidates, direct, up.name, name, str(digest))

        fill, started = self.fills.join_or_start(digest, make_source, up.name, name, local_only)
        if fill is None:  # completed between the two checks
            blob = self.store.open(digest)
            if blob is None:
                raise BlobUnknown()
            return blob, False
        return fill, started

    async def blob_size(self, up: Upstream, name: str, digest: Digest) -> int:
        """The size of a blob for HEAD, without starting a fill."""
        size = self.store.size(digest)
        if size is not None:
            return size
        if self.config.offline:
            raise BlobUnknown("not in the cache, and the proxy is offline")
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
