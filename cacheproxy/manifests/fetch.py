"""The last link: the upstream registry itself, by digest (GET) and for what a tag
names (HEAD when a digest is known or the manifest is not wanted: Docker Hub does
not count a HEAD as a pull; GET otherwise)."""

from __future__ import annotations

import aiohttp

from ..errors import DigestInvalid, ManifestUnknown
from ..oci import MANIFEST_TYPES, Digest, digest_of, manifest_media_type, parse_digest
from ..store.index import TagEntry, TagKey
from ..upstream.client import Upstream, error_for_status, pull_scope, read_bounded
from .source import Found, Named, verify


class UpstreamManifests:
    """Asks the upstream; what it sends is verified before anyone sees it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    async def by_digest(self, up: Upstream, repo: str, digest: Digest) -> Found:
        path = f"/v2/{repo}/manifests/{digest}"
        async with await _ok(up, repo, "GET", path, MANIFEST_TYPES) as resp:
            body = await read_bounded(resp, self._limit)
            header_type = resp.headers.get("Content-Type")
        verify(body, str(digest))
        return Found(digest, manifest_media_type(body, header_type), body, "upstream")

    async def resolve(self, up: Upstream, key: TagKey, known: TagEntry | None, body: bool) -> Named:
        if known is not None or not body:
            named = await self._head(up, key)
            if named is not None:
                return named
        return await self._get(up, key)

    async def _head(self, up: Upstream, key: TagKey) -> Named | None:
        """HEAD the tag; None when the answer lacks what a tag's entry needs."""
        path = f"/v2/{key.name}/manifests/{key.tag}"
        async with await _ok(up, key.name, "HEAD", path, key.accept) as resp:
            digest = resp.headers.get("Docker-Content-Digest", "")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            size = resp.content_length
        try:
            parse_digest(digest)
        except DigestInvalid:
            return None
        if media_type not in key.accept or size is None:
            return None
        return Named(digest, media_type, size)

    async def _get(self, up: Upstream, key: TagKey) -> Named:
        path = f"/v2/{key.name}/manifests/{key.tag}"
        async with await _ok(up, key.name, "GET", path, key.accept) as resp:
            body = await read_bounded(resp, self._limit)
            # Without the header, the digest is the bytes' own (sha256).
            claimed = resp.headers.get("Docker-Content-Digest") or str(digest_of(body))
            header_type = resp.headers.get("Content-Type")
        digest = verify(body, claimed)
        media_type = manifest_media_type(body, header_type)
        if media_type not in key.accept:
            raise ManifestUnknown(
                f"upstream holds a {media_type} for this tag, which the Accept does not admit"
            )
        found = Found(digest, media_type, body, "upstream")
        return Named(str(digest), media_type, len(body), found)


async def _ok(
    up: Upstream, repo: str, method: str, path: str, accept: tuple[str, ...]
) -> aiohttp.ClientResponse:
    """The upstream's 200 answer, or the error its answer maps to."""
    resp = await up.request(
        method, path, scope=pull_scope(repo), headers={"Accept": ", ".join(accept)}
    )
    if resp.status != 200:
        err = error_for_status(resp, ManifestUnknown)
        resp.release()
        raise err
    return resp
