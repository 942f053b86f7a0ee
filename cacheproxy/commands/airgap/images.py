"""The manifests an image stands for, and what travels with them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ManifestUnknown, RegistryError
from ...oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    ImageRef,
    digest_of,
    parse_digest,
)
from ...registries import DOCKER_HUB
from ...runtime import Runtime
from ...upstream.client import Upstream


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


# cosign's tags beside an image before OCI 1.1: a signature, an attestation, an SBOM.
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
# Annotation of a bundle entry that travels with an image: the subject's digest.
ANN_REFERRERS_OF = "io.cacheproxy.referrers-of"


@dataclass(frozen=True)
class Related:
    """What travels with one manifest: ``tagged``, kept under ``tag`` (the referrers
    tag schema's ``<alg>-<hex>``, or cosign's ``.sig``/``.att``/``.sbom``), and the
    referrer manifests it lists. ``made_here``: ``tagged`` is this proxy's own index of
    the referrers (the upstream's API, or its tag schema, merged), not a manifest of
    the upstream's."""

    subject: str
    tag: str
    tagged: tuple[str, bytes, str]
    referrers: list[tuple[str, bytes, str]]
    made_here: bool = False

    def fetched(self) -> list[tuple[str, bytes, str]]:
        """The upstream's manifests among them (whose blobs a prefetch brings in)."""
        return self.referrers if self.made_here else [self.tagged, *self.referrers]


async def related_manifests(rt: Runtime, up: Upstream, name: str, subject: str) -> list[Related]:
    """The referrers of ``subject`` under (``up``, ``name``) (the API's and the tag
    schema's, as the referrers service merges them) as one tag schema index of the
    referrer manifests to be had, and cosign's older tags; what cannot be had (the
    cache offline, a referrer the upstream lists and does not give) is left out."""
    digest = parse_digest(subject)
    manifests = rt.clients.manifests
    found: list[Related] = []
    listing = await rt.clients.referrers.listing(up, name, digest, None)
    referrers: list[tuple[str, bytes, str]] = []
    listed = []
    for desc in listing.descriptors:
        try:
            got = await manifests.manifest(up, name, desc["digest"], list(MANIFEST_TYPES), True)
        except RegistryError:
            continue
        assert got.body is not None
        referrers.append((got.digest, got.body, got.media_type))
        listed.append(desc)
    schema_tag = f"{digest.algorithm}-{digest.hex}"
    if referrers:
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed})
        body = index.encode()
        top = (str(digest_of(body)), body, OCI_INDEX)
        found.append(Related(subject, schema_tag, top, referrers, made_here=True))
    for tag in (schema_tag + suffix for suffix in COSIGN_SUFFIXES):
        try:
            got = await manifests.manifest(up, name, tag, list(MANIFEST_TYPES), True)
        except ManifestUnknown:
            continue
        assert got.body is not None
        found.append(Related(subject, tag, (got.digest, got.body, got.media_type), []))
    return found
