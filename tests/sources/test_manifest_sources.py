"""What every manifest source answers: the same tests, run against each link of the
chain (this node's index, the key's owner, the shared tier, the upstream), over the
real registry. Where a source differs for a reason, the expectation is written down
in :mod:`tests.sources.manifest_rig` (``ManifestKind``) and asserted here.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cacheproxy.errors import ManifestUnknown, RegistryError
from cacheproxy.manifests.source import BadManifest, verify
from cacheproxy.oci import MANIFEST_TYPES, OCI_INDEX, parse_digest
from cacheproxy.store.index import TagKey
from tests.sources.manifest_rig import (
    MANIFEST_KINDS,
    ManifestKind,
    ManifestSubject,
    open_manifest_subject,
)
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import Media, PushedImage, push_image
from tests.support.names import unique
from tests.support.registry import RegistryProcess
from tests.support.s3 import MotoS3

GET = frozenset({"GET"})


@pytest.fixture(params=["oci", "docker"])
async def image(registry: RegistryProcess, request: pytest.FixtureRequest) -> PushedImage:
    """An image of this test's own (OCI or Docker schema2), pushed straight to the
    registry (not through the forwarder, whose counts are then the source's alone)."""
    media: Media = request.param
    return await push_image(
        registry.url, unique("msources"), "v1", layer_sizes=(1000,), media=media
    )


@pytest.fixture(params=MANIFEST_KINDS, ids=lambda kind: kind.name)
async def subject(
    request: pytest.FixtureRequest,
    forwarder: Forwarder,
    tmp_path: Path,
    image: PushedImage,
    moto: MotoS3,
) -> AsyncIterator[ManifestSubject]:
    kind: ManifestKind = request.param
    async with open_manifest_subject(kind, forwarder, tmp_path, image, moto) as subject:
        yield subject


def key_of(subject: ManifestSubject, tag: str = "v1") -> TagKey:
    return TagKey(subject.up.name, subject.image.name, tag, MANIFEST_TYPES)


async def test_by_digest_the_exact_bytes_their_type_and_origin(
    subject: ManifestSubject, image: PushedImage
) -> None:
    before = len(subject.wire.requests)
    found = await subject.source.by_digest(subject.up, image.name, parse_digest(image.digest))
    assert found.body == image.manifest
    assert str(found.digest) == image.digest
    assert found.media_type == image.media_type
    assert found.origin == subject.kind.origin
    fetched = subject.wire.requests[before:]
    if subject.kind.origin == "cache" or subject.kind.origin == "shared":
        assert fetched == [], "answered without asking the upstream"
    else:
        assert fetched, "the upstream was asked"


async def test_a_tag_is_resolved_past_this_node(
    subject: ManifestSubject, image: PushedImage
) -> None:
    if not subject.kind.resolves:
        with pytest.raises(ManifestUnknown):
            await subject.source.resolve(subject.up, key_of(subject), None, True)
        return
    for known, body in ((None, True), (None, False)):
        named = await subject.source.resolve(subject.up, key_of(subject), known, body)
        assert (named.digest, named.media_type, named.size) == (
            image.digest,
            image.media_type,
            len(image.manifest),
        )
        brings = subject.kind.brings == "always" or (subject.kind.brings == "asked" and body)
        assert (named.found is not None) == brings
        if named.found is not None:
            assert named.found.body == image.manifest
            assert named.found.origin == subject.kind.origin


async def test_what_nobody_has_is_unknown(subject: ManifestSubject, image: PushedImage) -> None:
    missing = parse_digest("sha256:" + "0" * 64)
    with pytest.raises(ManifestUnknown):
        await subject.source.by_digest(subject.up, image.name, missing)
    if subject.kind.resolves:
        with pytest.raises(ManifestUnknown):
            await subject.source.resolve(subject.up, key_of(subject, "no-such-tag"), None, True)


async def test_a_wrong_byte_is_never_answered(subject: ManifestSubject, image: PushedImage) -> None:
    """One byte of the manifest flipped on the wire the source reads (the upstream's,
    or the bucket's object): the source raises, or answers the right bytes from the
    next link, never the wrong ones."""
    subject.wire.set_fault(Fault(match="/manifests/", kind="corrupt", offset=10, methods=GET))
    if subject.bucket_put is not None:
        wrong = bytearray(image.manifest)
        wrong[10] ^= 0xFF
        await subject.bucket_put(bytes(wrong), image.media_type)
        subject.wire.clear_faults()
    try:
        found = await subject.source.by_digest(subject.up, image.name, parse_digest(image.digest))
    except RegistryError:
        assert subject.kind.fetches
    else:
        assert found.body == image.manifest
        if subject.kind.fetches:
            assert subject.bucket_put is not None, "only the bucket has a next link to ask"
            assert found.origin == "upstream"
        else:
            assert found.origin == "cache"  # what this node holds was checked when kept


async def test_the_media_type_is_the_bytes_own_from_an_unsigned_source(
    subject: ManifestSubject, image: PushedImage
) -> None:
    """A bucket object carries a Content-Type anyone who may write there sets: the
    kept type is the bytes' own. (The owner signs its Content-Type; the upstream is
    the registry itself.)"""
    if subject.bucket_put is None or subject.kind.origin != "shared":
        found = await subject.source.by_digest(subject.up, image.name, parse_digest(image.digest))
        assert found.media_type == image.media_type
        return
    await subject.bucket_put(image.manifest, OCI_INDEX)
    found = await subject.source.by_digest(subject.up, image.name, parse_digest(image.digest))
    assert (found.origin, found.media_type) == ("shared", image.media_type)


def test_verify_is_the_one_check() -> None:
    body = b'{"schemaVersion": 2}'
    digest = verify(body, "sha256:" + hashlib.sha256(body).hexdigest())
    assert str(digest).startswith("sha256:")
    for claimed in ("sha256:" + "0" * 64, "not-a-digest", ""):
        with pytest.raises(BadManifest):
            verify(body, claimed)
