"""An image as an operator names it: the manifests it stands for (an index's children
too), the blobs they name, and what travels with each (its referrers, cosign's
older tags). What prefetch, export and a cluster's preheat all walk."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ManifestUnknown, RegistryError
from ..oci import INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, ImageRef, digest_of, parse_digest
from ..registries import DOCKER_HUB
from ..upstream.client import Upstream
from .referrers import Referrers
from .service import ManifestService

# cosign's tags beside an image before OCI 1.1: a signature, an attestation, an SBOM.
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")

# (digest, body, media type) of one manifest.
Manifested = tuple[str, bytes, str]


def repository(up: Upstream, name: str) -> str:
    """The repository's name on its upstream (Docker Hub's official images live under
    ``library/``, as docker pull names them)."""
    return f"library/{name}" if up.name == DOCKER_HUB and "/" not in name else name


async def image_manifests(
    manifests: ManifestService, up: Upstream, ref: ImageRef, platform: str | None
) -> tuple[list[Manifested], str]:
    """The image's manifest and, for an index, its children (those of ``platform``
    when given), and the repository's name on its upstream."""
    name = repository(up, ref.name)
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


def blobs_of(manifests: Iterable[Manifested]) -> dict[str, int]:
    """The config and layers (digest: size) the image manifests among ``manifests``
    name; a foreign layer (``urls``: the registry need not hold it) is left out."""
    blobs: dict[str, int] = {}
    for _, body, media_type in manifests:
        if media_type in INDEX_TYPES:
            continue
        doc = json.loads(body)
        for desc in [doc.get("config"), *doc.get("layers", [])]:
            if isinstance(desc, dict) and not desc.get("urls"):
                blobs[desc["digest"]] = size_of(desc)
    return blobs


def size_of(desc: dict[str, object]) -> int:
    """A descriptor's ``size``: a JSON integer, int64 (OCI image spec, "Descriptor").
    ``int()`` would take a string ("1_0", "\\u0663"), a float or true from the
    upstream's manifest; none of them is a size."""
    size = desc.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**63:
        raise ValueError(f"the manifest names a blob size that is not one: {str(size)[:20]!r}")
    return size


@dataclass(frozen=True)
class Related:
    """What travels with one manifest: ``tagged``, kept under ``tag`` (the referrers
    tag schema's ``<alg>-<hex>``, or cosign's ``.sig``/``.att``/``.sbom``), and the
    referrer manifests it lists. ``made_here``: ``tagged`` is this proxy's own index of
    the referrers (the upstream's API, or its tag schema, merged), not a manifest of
    the upstream's."""

    subject: str
    tag: str
    tagged: Manifested
    referrers: list[Manifested]
    made_here: bool = False

    def fetched(self) -> list[Manifested]:
        """The upstream's manifests among them (whose blobs a prefetch brings in)."""
        return self.referrers if self.made_here else [self.tagged, *self.referrers]


async def related_manifests(
    manifests: ManifestService, referrers: Referrers, up: Upstream, name: str, subject: str
) -> list[Related]:
    """The referrers of ``subject`` under (``up``, ``name``) (the API's and the tag
    schema's, as the referrers service merges them) as one tag schema index of the
    referrer manifests to be had, and cosign's older tags; what cannot be had (the
    cache offline, a referrer the upstream lists and does not give) is left out."""
    digest = parse_digest(subject)
    found: list[Related] = []
    listing = await referrers.listing(up, name, digest, None)
    had: list[Manifested] = []
    listed = []
    for desc in listing.descriptors:
        try:
            got = await manifests.manifest(up, name, desc["digest"], list(MANIFEST_TYPES), True)
        except RegistryError:
            continue
        assert got.body is not None
        had.append((got.digest, got.body, got.media_type))
        listed.append(desc)
    schema_tag = f"{digest.algorithm}-{digest.hex}"
    if had:
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed})
        body = index.encode()
        found.append(Related(subject, schema_tag, (str(digest_of(body)), body, OCI_INDEX), had,
                             made_here=True))  # fmt: skip
    for tag in (schema_tag + suffix for suffix in COSIGN_SUFFIXES):
        try:
            got = await manifests.manifest(up, name, tag, list(MANIFEST_TYPES), True)
        except ManifestUnknown:
            continue
        assert got.body is not None
        found.append(Related(subject, tag, (got.digest, got.body, got.media_type), []))
    return found
