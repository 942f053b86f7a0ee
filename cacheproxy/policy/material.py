"""Verification material: the manifests a policy lets through unsigned, because they
are what a verifier downstream reads and nothing a runtime runs.

A signature cannot be signed in turn, and a verifier behind the mirror (cosign,
notation, an admission controller) must find signatures, attestations and SBOMs
under the very repository the policy guards. So an image manifest every layer of
which is one of these (cosign 2's simple signing payloads, Sigstore bundles, DSSE
and in-toto attestations, notation's JWS/COSE envelopes, SPDX and CycloneDX SBOMs,
the OCI empty descriptor) is served by the links rule alone; so is an index every
entry of which carries an ``artifactType`` (the referrers tag schema's list), whose
entries are each checked when asked. A manifest with any other layer (a filesystem
layer, or a type not listed here) is checked. A runtime does not unpack a layer of
these types (containerd's applier refuses a media type it does not know), so
dressing an image's layers in them gains nothing to run; its blobs stay reachable
under the links rule, as a signature's are.
"""

from __future__ import annotations

import json

from ..oci import INDEX_TYPES

LAYER_TYPES = frozenset(
    {
        "application/vnd.dev.cosign.simplesigning.v1+json",
        "application/vnd.dsse.envelope.v1+json",
        "application/vnd.in-toto+json",
        "application/jose+json",
        "application/cose",
        "application/spdx+json",
        "text/spdx",
        "text/spdx+json",
        "application/vnd.cyclonedx+json",
        "application/vnd.cyclonedx+xml",
        "application/vnd.oci.empty.v1+json",
    }
)
BUNDLE_PREFIX = "application/vnd.dev.sigstore.bundle"
# Entries looked at at most (an index past it is checked like any).
MAX_ENTRIES = 4096


def is_material(media_type: str, body: bytes) -> bool:
    """Whether the manifest is verification material (see the module docstring)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(doc, dict):
        return False
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        return (
            isinstance(entries, list)
            and 0 < len(entries) <= MAX_ENTRIES
            and all(isinstance(e, dict) and isinstance(e.get("artifactType"), str)
                    for e in entries)
        )  # fmt: skip
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers or "manifests" in doc:
        return False
    for layer in layers[:MAX_ENTRIES]:
        kind = layer.get("mediaType") if isinstance(layer, dict) else None
        if not isinstance(kind, str) or not (kind in LAYER_TYPES or kind.startswith(BUNDLE_PREFIX)):
            return False
    return len(layers) <= MAX_ENTRIES
