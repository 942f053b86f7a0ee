"""The signatures an upstream keeps for a manifest, found the ways cosign leaves them:
Sigstore bundles among its referrers (cosign 3; the referrers service reads the
upstream's API and the tag schema), and the layers of the ``sha256-<hex>.sig`` tag
(cosign 2).

Everything is read through services that count nothing in the ledger and are never
policed themselves (a signature is no image a client pulled), under the links rule
of the repository asked, and from the cache when offline. At most ``limit``
signatures are taken per manifest, each at most ``MAX_SIGNATURE_BYTES``: a
repository holding thousands of them is an attack on the check, not a signer.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from ..blobs.service import BlobService
from ..blobs.source import Want
from ..errors import BlobUnknown, ManifestUnknown
from ..manifests.referrers import Referrers
from ..manifests.service import ManifestService
from ..oci import DOCKER_MANIFEST, OCI_MANIFEST, Digest, is_digest, parse_digest
from ..upstream.client import Upstream
from .cosign import BUNDLE_TYPE, SIGNATURE_ANNOTATION, SIMPLE_SIGNING

# Signatures checked per manifest at most (bundles first, then the .sig tag's layers).
MAX_SIGNATURES = 16
# A simple signing payload is a few hundred bytes; a bundle with a certificate chain
# and log entries a few KiB.
MAX_SIGNATURE_BYTES = 256 * 1024
# Who the fill slots see asking for signatures (a share of its own: a pull's own
# blobs do not wait behind them, nor they behind one client's pull).
REQUESTER = "policy signatures"
ACCEPT = [OCI_MANIFEST, DOCKER_MANIFEST]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A signature to check: ``where`` is the digest of the manifest that carries it
    (what a verdict rests on)."""

    where: str
    kind: Literal["simple", "bundle"]
    body: bytes
    # The base64 signature (simple signing); "" for a bundle, which carries its own.
    signature: str = ""


class SignatureFinder:
    """Finds a manifest's signatures under (upstream, repository)."""

    def __init__(
        self,
        manifests: ManifestService,
        referrers: Referrers,
        blobs: BlobService,
        limit: int = MAX_SIGNATURES,
    ) -> None:
        self._manifests = manifests
        self._referrers = referrers
        self._blobs = blobs
        self._limit = limit

    async def find(self, up: Upstream, repo: str, digest: Digest) -> list[Candidate]:
        """The signatures of ``digest``, at most ``limit`` of them."""
        found: list[Candidate] = []
        listing = await self._referrers.listing(up, repo, digest, BUNDLE_TYPE)
        for desc in listing.descriptors[: self._limit]:
            found.extend(await self._from_referrer(up, repo, str(desc["digest"])))
        tag = f"{digest.algorithm}-{digest.hex}.sig"
        try:
            answer = await self._manifests.manifest(up, repo, tag, ACCEPT, True)
        except ManifestUnknown:
            return found[: self._limit]
        for layer in _layers(answer.body or b"")[: self._limit]:
            note = layer.get("annotations")
            signature = note.get(SIGNATURE_ANNOTATION) if isinstance(note, dict) else None
            if layer.get("mediaType") != SIMPLE_SIGNING or not isinstance(signature, str):
                continue
            if len(found) >= self._limit:
                break
            payload = await self._blob(up, repo, layer)
            if payload is not None:
                found.append(Candidate(answer.digest, "simple", payload, signature))
        return found[: self._limit]

    async def _from_referrer(self, up: Upstream, repo: str, digest: str) -> list[Candidate]:
        """The bundle a cosign 3 referrer's layer holds (none when it is gone)."""
        try:
            answer = await self._manifests.manifest(up, repo, digest, ACCEPT, True)
        except ManifestUnknown:
            return []
        for layer in _layers(answer.body or b""):
            if str(layer.get("mediaType", "")).startswith("application/vnd.dev.sigstore.bundle"):
                bundle = await self._blob(up, repo, layer)
                return [] if bundle is None else [Candidate(answer.digest, "bundle", bundle)]
        return []

    async def _blob(self, up: Upstream, repo: str, layer: dict[str, Any]) -> bytes | None:
        """A signature layer's bytes (verified against its digest on the way in), or
        None when it is too large or not to be had."""
        size, digest = layer.get("size"), layer.get("digest")
        if not isinstance(size, int) or not 0 <= size <= MAX_SIGNATURE_BYTES:
            return None
        if not isinstance(digest, str) or not is_digest(digest):
            return None
        want = Want(up, repo, parse_digest(digest), REQUESTER)
        sink = BufferSink(MAX_SIGNATURE_BYTES)
        try:
            async with self._blobs.open(want) as body:
                if body.location is not None:
                    return None  # a redirect: this chain is built without them
                await body.send(sink, 0, None)
        except (BlobUnknown, ValueError):
            # Gone, or more than it said (a ValueError: the sink's bound).
            return None
        return bytes(sink.data)


class BufferSink:
    """A body's bytes in memory, up to ``limit`` (ValueError beyond)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        if len(self.data) + len(data) > self._limit:
            raise ValueError("a signature larger than its bound")
        self.data += data

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        if len(self.data) + count > self._limit:
            raise ValueError("a signature larger than its bound")
        # Off the loop, as every file read of the serving path.
        chunk = await asyncio.to_thread(os.pread, fd, count, offset)
        if len(chunk) != count:
            raise OSError("blob file is shorter than its size")
        self.data += chunk


def _layers(body: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    layers = doc.get("layers") if isinstance(doc, dict) else None
    return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []
