"""``cacheproxy import``: an OCI image layout tar verified and loaded into the cache.

Every blob is checked against its digest before it is kept, tags last, so an
interrupted import leaves nothing unverified and no tag naming missing content.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ...blobs.disk import DiskBudget
from ...config import Config
from ...links import reach_sync
from ...oci import (
    HOST_RE,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Digest,
    parse_digest,
    references,
    validate_name,
    validate_tag,
)
from ...runtime import open_runtime
from ...store.files import BlobStore
from ...store.index import Index, TagEntry, TagKey
from .export import ANN_REPO, ANN_TAG, ANN_UPSTREAM
from .images import ANN_REFERRERS_OF

_BLOB_MEMBER = re.compile(r"(?:\./)?blobs/(sha256|sha512)/([a-f0-9]+)")


@dataclass
class ImportResult:
    """What an import loaded: new blobs, blobs already cached, the tags set."""

    blobs: int = 0
    already: int = 0
    tags: list[str] = field(default_factory=list)


def import_bundle(config: Config, bundle: Path, referrers: bool = True) -> ImportResult:
    """Verify and load an OCI layout tar into the cache (without what travels with its
    images, referrers and signatures, unless ``referrers``)."""

    async def main() -> ImportResult:
        async with open_runtime(config) as rt:
            budget = rt.fills.budget
            return await asyncio.to_thread(_import, rt.store, rt.index, bundle, budget, referrers)

    return asyncio.run(main())


def _import(
    store: BlobStore, index: Index, bundle: Path, budget: DiskBudget, referrers: bool = True
) -> ImportResult:
    """Verify and load an OCI layout tar (blocking), within the cache's limit and the
    disk's free space: what a member says it holds is checked before a byte of it is
    written (a sparse tar can announce gigabytes in a few kilobytes).

    Only what the bundle itself carries, verified, is linked under the repositories
    it names: a member already in the cache is read and checked too, and a digest a
    manifest names but the bundle does not carry is never linked (the cache may hold
    it for another repository; naming it proves nothing).
    """
    result = ImportResult()
    carried: set[str] = set()
    room = budget.room_for_import(sum(store.scan()[0].values()))
    with tarfile.open(bundle, "r") as tar:
        layout: dict[str, Any] | None = None
        for member in tar:
            name = member.name.lstrip("./") if member.name.startswith("./") else member.name
            if name == "index.json" and member.isfile():
                handle = tar.extractfile(member)
                if handle is not None:
                    layout = json.loads(handle.read(4 * 1024 * 1024))
                continue
            m = _BLOB_MEMBER.fullmatch(member.name)
            if m is None or not member.isfile():
                continue
            digest = parse_digest(f"{m.group(1)}:{m.group(2)}")
            handle = tar.extractfile(member)
            if handle is None:
                continue
            if store.exists(digest):
                _copy_verified(digest, handle, member.size, None)
                result.already += 1
            else:
                if member.size > room:
                    raise ValueError(
                        f"{digest} ({member.size} bytes) does not fit in the cache"
                        " (max_size, min_free); import stopped"
                    )
                room -= member.size
                _load_blob(store, digest, handle, member.size)
                result.blobs += 1
            carried.add(str(digest))
    if layout is None:
        raise ValueError(f"{bundle} has no index.json: not an OCI image layout")
    _load_tags(store, index, layout, result, carried, referrers)
    return result


def _copy_verified(digest: Digest, handle: IO[bytes], size: int, fd: int | None) -> None:
    """Read ``size`` bytes of ``handle``, checking them against ``digest`` (and writing
    them to ``fd`` if given); ValueError when they do not match."""
    hasher = digest.hasher()
    written = 0
    while chunk := handle.read(1 << 20):
        hasher.update(chunk)
        if fd is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        written += len(chunk)
    if written != size or hasher.hexdigest() != digest.hex:
        raise ValueError(f"{digest} in the bundle does not match its digest; import stopped")


def _load_blob(store: BlobStore, digest: Digest, handle: IO[bytes], size: int) -> None:
    tmp_path, fd = store.new_temp(digest)
    try:
        _copy_verified(digest, handle, size, fd)
        store.commit(tmp_path, fd, digest)
    except BaseException:
        store.discard(tmp_path)
        raise
    finally:
        os.close(fd)


def _load_tags(
    store: BlobStore,
    index: Index,
    layout: dict[str, Any],
    result: ImportResult,
    carried: set[str],
    referrers: bool = True,
) -> None:
    now = time.time()
    pairs: dict[str, dict[str, float]] = {}
    for desc in layout.get("manifests", []):
        if not referrers and ANN_REFERRERS_OF in (desc.get("annotations") or {}):
            continue
        digest = parse_digest(desc["digest"])
        body = store.read(digest) if str(digest) in carried else None
        if body is None:
            raise ValueError(f"manifest {digest} is not in the bundle")
        media_type = _manifest_type(desc)
        index.set_manifest_type_sync(str(digest), media_type)
        if media_type in INDEX_TYPES:
            # An index may travel with some of its platforms only.
            for child in json.loads(body).get("manifests", []):
                if child.get("digest") in carried:
                    index.set_manifest_type_sync(child["digest"], _manifest_type(child))
        else:
            for child in references(body):
                if child not in carried:
                    raise ValueError(f"blob {child} of {digest} is not in the bundle")
        ann = desc.get("annotations") or {}
        upstream, repo, tag = ann.get(ANN_UPSTREAM), ann.get(ANN_REPO), ann.get(ANN_TAG)
        if upstream and repo:
            if not isinstance(upstream, str) or not HOST_RE.fullmatch(upstream):
                raise ValueError(f"{digest}: {str(upstream)[:100]!r} is not a registry host")
            validate_name(repo)
            # Exported from that upstream's repository: what the bundle carries of it
            # may be served there.
            reach_sync(store, upstream, repo, str(digest), pairs, now, carried)
            if tag:
                validate_tag(tag)
                entry = TagEntry(str(digest), media_type, len(body), now)
                index.set_tag_sync(TagKey(upstream, repo, tag, MANIFEST_TYPES), entry)
                result.tags.append(f"{upstream}/{repo}:{tag}")
    if pairs:
        index.add_links_sync(pairs)


def _manifest_type(desc: dict[str, Any]) -> str:
    media_type = desc.get("mediaType", "")
    if media_type not in MANIFEST_TYPES:
        raise ValueError(
            f"{str(desc.get('digest'))[:80]}: {str(media_type)[:80]!r} is not a manifest"
        )
    return str(media_type)
