"""``cacheproxy export``: cached images as a standard OCI image layout tar, each
image's top manifest annotated with where it came from (``import`` reads these)."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...config import Config
from ...errors import RegistryError
from ...oci import OCI_INDEX, parse_digest, references
from ...runtime import Runtime, open_runtime
from ...store.files import BlobStore
from .images import image_manifests, parse_ref

REF_NAME = "org.opencontainers.image.ref.name"
ANN_UPSTREAM = "io.cacheproxy.upstream"
ANN_REPO = "io.cacheproxy.repository"
ANN_TAG = "io.cacheproxy.tag"


async def export(config: Config, images: Iterable[str], output: Path) -> int:
    """Write the cached ``images`` as an OCI image layout tar; returns blobs written."""
    offline = replace(config, offline=True)
    entries: list[dict[str, Any]] = []
    digests: dict[str, None] = {}
    # Reads only (the bundle goes elsewhere): runs beside a server, without its lock.
    async with open_runtime(offline, writes=False) as rt:
        for text in images:
            entries.append(await _image_entry(rt, text, digests))
        layout = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        await asyncio.to_thread(_write_tar, rt.store, list(digests), layout, output)
    return len(digests)


async def _image_entry(rt: Runtime, text: str, digests: dict[str, None]) -> dict[str, Any]:
    """The index.json entry of image ``text``; adds what it is made of to ``digests``
    (RegistryError when the cache lacks a blob of it)."""
    ref = parse_ref(text)
    manifests, name = await image_manifests(rt, ref, None)
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
    return {
        "mediaType": top_type,
        "digest": top_digest,
        "size": len(top_body),
        "annotations": annotations,
    }


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
