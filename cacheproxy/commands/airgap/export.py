"""``cacheproxy export``: cached images as a standard OCI image layout tar, each
image's top manifest annotated with where it came from (``import`` reads these)."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...config import Config
from ...errors import RegistryError
from ...oci import OCI_INDEX, parse_digest, parse_ref, references
from ...runtime import Runtime, open_runtime
from ...store.files import BlobStore
from .images import ANN_REFERRERS_OF, image_manifests, related_manifests

REF_NAME = "org.opencontainers.image.ref.name"
ANN_UPSTREAM = "io.cacheproxy.upstream"
ANN_REPO = "io.cacheproxy.repository"
ANN_TAG = "io.cacheproxy.tag"


async def export(
    config: Config, images: Iterable[str], output: Path, referrers: bool = True
) -> int:
    """Write the cached ``images`` as an OCI image layout tar; returns blobs written.
    With ``referrers``, what travels with each of their manifests goes too: its
    referrers, as one index under the referrers tag schema's tag (what a verifier in
    the air gap, or the proxy there, reads), and cosign's older tags."""
    offline = replace(config, offline=True)
    bundle = _Bundle()
    # Reads only (the bundle goes elsewhere): runs beside a server, without its lock.
    async with open_runtime(offline, writes=False) as rt:
        for text in images:
            await _add_image(rt, text, bundle, referrers)
        layout = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": bundle.entries}
        await asyncio.to_thread(_write_tar, rt.store, bundle, layout, output)
    return len(bundle.digests) + len(bundle.made)


@dataclass
class _Bundle:
    entries: list[dict[str, Any]] = field(default_factory=list)
    # What the cache holds, and what the export makes (the referrers' indexes).
    digests: dict[str, None] = field(default_factory=dict)
    made: dict[str, bytes] = field(default_factory=dict)


async def _add_image(rt: Runtime, text: str, bundle: _Bundle, referrers: bool) -> None:
    """The index.json entries of image ``text`` (and what travels with it), and what
    they are made of (RegistryError when the cache lacks a blob of them)."""
    ref = parse_ref(text)
    manifests, name = await image_manifests(rt, ref, None)
    up = rt.upstreams.get(ref.host)
    _contents(rt, ref.text, manifests, bundle)
    annotations = {REF_NAME: ref.text, ANN_UPSTREAM: up.name, ANN_REPO: name}
    if ":" not in ref.reference:
        annotations[ANN_TAG] = ref.reference
    bundle.entries.append(_entry(manifests[0], annotations))
    if not referrers:
        return
    for digest, _, _ in list(manifests):
        for related in await related_manifests(rt, up, name, digest):
            if related.made_here:
                bundle.made[related.tagged[0]] = related.tagged[1]
                _contents(rt, ref.text, related.referrers, bundle)
            else:
                _contents(rt, ref.text, [related.tagged], bundle)
            extra = {ANN_UPSTREAM: up.name, ANN_REPO: name, ANN_TAG: related.tag}
            extra[ANN_REFERRERS_OF] = related.subject
            bundle.entries.append(_entry(related.tagged, extra))


def _contents(
    rt: Runtime, text: str, manifests: list[tuple[str, bytes, str]], bundle: _Bundle
) -> None:
    for digest, body, _ in manifests:
        bundle.digests[digest] = None
        for child in references(body):
            if rt.store.exists(parse_digest(child)):
                bundle.digests[child] = None
            elif child not in {m[0] for m in manifests}:
                raise RegistryError(f"{text}: blob {child} is not in the cache")


def _entry(manifest: tuple[str, bytes, str], annotations: dict[str, str]) -> dict[str, Any]:
    digest, body, media_type = manifest
    return {"mediaType": media_type, "digest": digest, "size": len(body),
            "annotations": annotations}  # fmt: skip


def _write_tar(store: BlobStore, bundle: _Bundle, layout: dict[str, Any], out: Path) -> None:
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        for text in bundle.digests:
            digest = parse_digest(text)
            path = store.path(digest)
            tar.add(str(path), arcname=f"blobs/{digest.algorithm}/{digest.hex}", recursive=False)
        for text, body in bundle.made.items():
            digest = parse_digest(text)
            _add_bytes(tar, f"blobs/{digest.algorithm}/{digest.hex}", body)
        _add_bytes(tar, "index.json", json.dumps(layout, indent=2).encode())
    tmp.replace(out)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
