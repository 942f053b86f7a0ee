"""An image as the air-gap commands name it, and the manifests it stands for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    parse_digest,
    split_host,
    validate_name,
    validate_tag,
)
from ...registries import DOCKER_HUB
from ...runtime import Runtime


@dataclass(frozen=True)
class ImageRef:
    """``[registry/]name[:tag|@digest]`` as given, parsed."""

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
    """The images of a list file: one a line, blank lines and ``#`` comments skipped."""
    lines = path.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


async def image_manifests(
    rt: Runtime, ref: ImageRef, platform: str | None
) -> tuple[list[tuple[str, bytes, str]], str]:
    """(digest, body, media type) of the image and, for an index, its children (those
    of ``platform`` when given), and the repository's name on its upstream."""
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


def _platform_ok(desc: dict[str, Any], platform: str | None) -> bool:
    if platform is None:
        return True
    plat = desc.get("platform") or {}
    wanted = platform.split("/")
    have = [plat.get("os", ""), plat.get("architecture", ""), plat.get("variant", "")]
    return all(w == h for w, h in zip(wanted, have, strict=False))
