"""Air-gapped transfer: prefetch into the cache, export an OCI layout, import one.

``prefetch`` pulls images through the same code the server uses (one fill per
blob, every byte verified). ``export`` writes a standard OCI image layout tar from
the cache (``skopeo copy oci-archive:bundle.tar:<ref> ...`` reads it). ``import``
verifies every blob of such a tar against its digest and loads it, tags last, so
an interrupted import leaves nothing unverified and no tag naming missing content.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from ..blobs.admission import DiskBudget
from ..blobs.source import Want
from ..config import Config
from ..errors import RegistryError
from ..links import reach_sync
from ..oci import (
    HOST_RE,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    Digest,
    parse_digest,
    references,
    split_host,
    validate_name,
    validate_tag,
)
from ..registries import DOCKER_HUB
from ..runtime import Runtime, open_runtime
from ..store.files import BlobStore
from ..store.index import Index, TagEntry, TagKey

log = logging.getLogger(__name__)

REF_NAME = "org.opencontainers.image.ref.name"
ANN_UPSTREAM = "io.cacheproxy.upstream"
ANN_REPO = "io.cacheproxy.repository"
ANN_TAG = "io.cacheproxy.tag"
_BLOB_MEMBER = re.compile(r"(?:\./)?blobs/(sha256|sha512)/([a-f0-9]+)")


@dataclass(frozen=True)
class ImageRef:
    host: str | None
    name: str
    reference: str  # a tag or a digest
    text: str


def parse_ref(text: str) -> ImageRef:
    """``[registry/]name[:tag|@digest]`` with Docker's rules (default tag latest)."""
    raw = text.strip()
    rest, at, digest = raw.partition("@")
    host, path = split_host(rest)
    name, colon, tag = path.rpartition(":")
    if not colon or "/" in tag:
        name, tag = path, "latest"
    if at:
        parse_digest(digest)
        reference = digest
    else:
        validate_tag(tag)
        reference = tag
    validate_name(name)
    return ImageRef(host, name, reference, raw)


def read_list(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


# --- prefetch ---------------------------------------------------------------------


@dataclass
class PrefetchProgress:
    """Bytes, rate and ETA: one updating line on a terminal, plain lines otherwise."""

    out: IO[str] = field(default_factory=lambda: sys.stderr)
    total: int = 0
    done: int = 0
    blobs: int = 0
    started: float = field(default_factory=time.monotonic)
    # Bytes of the blobs on their way in, read as the ticker draws.
    moving: list[Callable[[], int]] = field(default_factory=list)

    def line(self) -> str:
        moving = self.done + sum(written() for written in self.moving)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = moving / elapsed
        eta = (self.total - moving) / rate if rate > 0 and self.total > moving else 0.0
        return (
            f"{moving / 1e6:9.1f} / {self.total / 1e6:.1f} MB  {rate / 1e6:7.1f} MB/s"
            f"  ETA {eta:5.0f} s  {self.blobs} blobs"
        )

    def blob_done(self, digest: str, size: int) -> None:
        self.done += size
        self.blobs += 1
        if not self.out.isatty():
            print(f"fetched {digest} ({size} bytes)", file=self.out)

    async def ticker(self) -> None:
        if not self.out.isatty():
            return
        while True:
            print("\r" + self.line(), end="", file=self.out, flush=True)
            await asyncio.sleep(0.2)


def _platform_ok(desc: dict[str, Any], platform: str | None) -> bool:
    if platform is None:
        return True
    plat = desc.get("platform") or {}
    wanted = platform.split("/")
    have = [plat.get("os", ""), plat.get("architecture", ""), plat.get("variant", "")]
    return all(w == h for w, h in zip(wanted, have, strict=False))


async def _manifests(
    rt: Runtime, ref: ImageRef, platform: str | None
) -> tuple[list[tuple[str, bytes, str]], str]:
    """(digest, body, media type) of the image and, for an index, its children."""
    up = rt.upstreams.get(ref.host)
    name = f"library/{ref.name}" if up.name == DOCKER_HUB and "/" not in ref.name else ref.name
    manifests = rt.clients.manifests
    top = await manifests.manifest(up, name, ref.reference, list(MANIFEST_TYPES), True)
    assert top.body is not None
    found = [(top.digest, top.body, top.media_type)]
    if top.media_type in INDEX_TYPES:
        for desc in json.loads(top.body).get("manifests", []):
            if _platform_ok(desc, platform):
                child = await manifests.manifest(
                    up, name, desc["digest"], list(MANIFEST_TYPES), True
                )
                assert child.body is not None
                found.append((child.digest, child.body, child.media_type))
    return found, name


async def prefetch(
    config: Config, images: Iterable[str], platform: str | None, concurrency: int = 4
) -> int:
    """Warm the cache with ``images``; returns how many failed."""
    refs = [parse_ref(i) for i in images]
    progress = PrefetchProgress()
    failures = 0
    async with open_runtime(config) as rt:
        gate = asyncio.Semaphore(concurrency)
        ticker = asyncio.create_task(progress.ticker())

        async def one_blob(up_host: str | None, name: str, digest: str, size: int) -> None:
            async with gate:
                want = Want(rt.upstreams.get(up_host), name, parse_digest(digest))
                async with rt.clients.blobs.open(want) as body:
                    fill = rt.fills.running(want)
                    if fill is not None:
                        progress.moving.append(fill.progress)
                    try:
                        await body.final_size()
                    finally:
                        if fill is not None:
                            progress.moving.remove(fill.progress)
                if not rt.store.exists(want.digest):
                    raise RegistryError(f"{digest} was not cached: the disk is nearly full")
                progress.blob_done(digest, size)

        try:
            for ref in refs:
                try:
                    manifests, name = await _manifests(rt, ref, platform)
                    blobs: dict[str, int] = {}
                    for _, body, media_type in manifests:
                        if media_type in INDEX_TYPES:
                            continue
                        doc = json.loads(body)
                        for desc in [doc.get("config"), *doc.get("layers", [])]:
                            if isinstance(desc, dict):
                                blobs[desc["digest"]] = int(desc.get("size", 0))
                    progress.total += sum(blobs.values())
                    await asyncio.gather(
                        *(one_blob(ref.host, name, d, s) for d, s in blobs.items())
                    )
                    print(f"\r{ref.text}: {len(blobs)} blobs cached" + " " * 30, file=progress.out)
                except (RegistryError, ValueError, KeyError) as exc:
                    failures += 1
                    message = exc.message if isinstance(exc, RegistryError) else str(exc)
                    print(f"\r{ref.text}: failed: {message}", file=progress.out)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    return failures


# --- export -----------------------------------------------------------------------


async def export(config: Config, images: Iterable[str], output: Path) -> int:
    """Write the cached ``images`` as an OCI image layout tar; returns blobs written."""
    offline = replace(config, offline=True)
    entries: list[dict[str, Any]] = []
    digests: dict[str, None] = {}
    # Reads only (the bundle goes elsewhere): runs beside a server, without its lock.
    async with open_runtime(offline, writes=False) as rt:
        for text in images:
            ref = parse_ref(text)
            manifests, name = await _manifests(rt, ref, None)
            top_digest, top_body, top_type = manifests[0]
            for digest, body, _ in manifests:
                digests[digest] = None
                for child in references(body):
                    if rt.store.exists(parse_digest(child)):
                        digests[child] = None
                    elif child not in {m[0] for m in manifests}:
                        raise RegistryError(f"{ref.text}: blob {child} is not in the cache")
            up = rt.upstreams.get(ref.host)
            annotations = {REF_NAME: ref.text, ANN_UPSTREAM: up.name, ANN_REPO: name}
            if ":" not in ref.reference:
                annotations[ANN_TAG] = ref.reference
            entries.append(
                {
                    "mediaType": top_type,
                    "digest": top_digest,
                    "size": len(top_body),
                    "annotations": annotations,
                }
            )
        layout = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        await asyncio.to_thread(_write_tar, rt.store, list(digests), layout, output)
    return len(digests)


def _write_tar(store: BlobStore, digests: list[str], layout: dict[str, Any], out: Path) -> None:
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        for text in digests:
            digest = parse_digest(text)
            path = store.path(digest)
            tar.add(str(path), arcname=f"blobs/{digest.algorithm}/{digest.hex}", recursive=False)
        _add_bytes(tar, "index.json", json.dumps(layout, indent=2).encode())
    tmp.replace(out)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


# --- import -----------------------------------------------------------------------


@dataclass
class ImportResult:
    blobs: int = 0
    already: int = 0
    tags: list[str] = field(default_factory=list)


def import_bundle(config: Config, bundle: Path) -> ImportResult:
    """Verify and load an OCI layout tar into the cache."""

    async def main() -> ImportResult:
        async with open_runtime(config) as rt:
            budget = rt.fills.budget
            return await asyncio.to_thread(_import, rt.store, rt.index, bundle, budget)

    return asyncio.run(main())


def _import(store: BlobStore, index: Index, bundle: Path, budget: DiskBudget) -> ImportResult:
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
    _load_tags(store, index, layout, result, carried)
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
) -> None:
    now = time.time()
    pairs: dict[str, dict[str, float]] = {}
    for desc in layout.get("manifests", []):
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
