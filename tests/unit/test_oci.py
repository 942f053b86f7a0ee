from __future__ import annotations

import pytest

from cacheproxy.errors import DigestInvalid, ManifestUnknown, NameInvalid, NotFound
from cacheproxy.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Route,
    accepted_manifest_types,
    manifest_media_type,
    parse_digest,
    parse_path,
)

HEX = "a" * 64


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v2/", Route("base")),
        ("/v2", Route("base")),
        ("/v2/library/alpine/manifests/3.19", Route("manifest", "library/alpine", "3.19")),
        (f"/v2/a/b/c/manifests/sha256:{HEX}", Route("manifest", "a/b/c", f"sha256:{HEX}")),
        (f"/v2/alpine/blobs/sha256:{HEX}", Route("blob", "alpine", f"sha256:{HEX}")),
        ("/v2/my-org/app_x/tags/list", Route("tags", "my-org/app_x")),
        ("/v2/a/blobs/uploads/", Route("upload", "a")),
        ("/v2/a/blobs/uploads/some-uuid", Route("upload", "a", "some-uuid")),
        # A repository may itself be called "manifests" or "blobs".
        ("/v2/manifests/manifests/latest", Route("manifest", "manifests", "latest")),
        (f"/v2/blobs/blobs/sha256:{HEX}", Route("blob", "blobs", f"sha256:{HEX}")),
    ],
)
def test_parse_path(path: str, route: Route) -> None:
    assert parse_path(path) == route


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/v2/Alpine/manifests/latest", NameInvalid),
        ("/v2/a//b/manifests/latest", NameInvalid),
        ("/v2/../etc/manifests/latest", NameInvalid),
        ("/v2/a/-b/manifests/latest", NameInvalid),
        ("/v2/a/manifests/-bad", ManifestUnknown),
        ("/v2/a/manifests/" + "t" * 129, ManifestUnknown),
        ("/v2/a/blobs/sha256:xyz", DigestInvalid),
        ("/v2/a/blobs/md5:" + "a" * 32, DigestInvalid),
        ("/v2/a/blobs/sha256:" + "A" * 64, DigestInvalid),
        ("/v2/a/blobs/latest", DigestInvalid),
        ("/v2/a/manifests/sha256:abc", DigestInvalid),
        ("/v2/" + "a" * 256 + "/manifests/latest", NameInvalid),
        ("/v2/a/unknown/x", NotFound),
        ("/etc/passwd", NotFound),
        ("/v2/a/manifests/", NotFound),
        ("/v2/a/manifests/x/y", NotFound),
    ],
)
def test_parse_path_rejects(path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_path(path)


def test_parse_digest() -> None:
    d = parse_digest(f"sha256:{HEX}")
    assert (d.algorithm, d.hex, str(d)) == ("sha256", HEX, f"sha256:{HEX}")
    assert parse_digest("sha512:" + "0" * 128).algorithm == "sha512"
    for bad in ["", "sha256", f"sha256:{HEX}0", f"SHA256:{HEX}", f"sha256: {HEX}"]:
        with pytest.raises(DigestInvalid):
            parse_digest(bad)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ([], MANIFEST_TYPES),
        (["*/*"], MANIFEST_TYPES),
        ([DOCKER_MANIFEST], (DOCKER_MANIFEST,)),
        ([f"{OCI_MANIFEST}, {OCI_INDEX}"], (OCI_INDEX, OCI_MANIFEST)),
        ([OCI_MANIFEST, DOCKER_MANIFEST], (OCI_MANIFEST, DOCKER_MANIFEST)),
        ([f"*/*, {OCI_INDEX};q=0"], (OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)),
        (["application/*;q=0.5"], MANIFEST_TYPES),
        (["text/html"], ()),
        ([f"{DOCKER_LIST} ; q=0.9"], (DOCKER_LIST,)),
    ],
)
def test_accepted_manifest_types(accept: list[str], expected: tuple[str, ...]) -> None:
    assert accepted_manifest_types(accept) == expected


def test_manifest_media_type() -> None:
    assert manifest_media_type(b'{"mediaType":"%s"}' % DOCKER_LIST.encode(), None) == DOCKER_LIST
    assert manifest_media_type(b'{"schemaVersion":2,"manifests":[]}', None) == OCI_INDEX
    assert manifest_media_type(b'{"schemaVersion":2,"layers":[]}', OCI_MANIFEST) == OCI_MANIFEST
    assert manifest_media_type(b'{"schemaVersion":2}', DOCKER_MANIFEST) == DOCKER_MANIFEST
    assert manifest_media_type(b"\xff", None) == "application/octet-stream"
    # A header that contradicts the body's shape is not believed.
    assert manifest_media_type(b'{"schemaVersion":2,"layers":[]}', OCI_INDEX) == OCI_MANIFEST
    assert manifest_media_type(b'{"schemaVersion":2,"manifests":[]}', DOCKER_MANIFEST) == OCI_INDEX
    declared = b'{"mediaType":"%s","layers":[]}' % DOCKER_MANIFEST.encode()
    assert manifest_media_type(declared, OCI_INDEX) == DOCKER_MANIFEST


def test_clean_host_is_what_may_be_echoed() -> None:
    from cacheproxy.registries import clean_host

    assert clean_host(" Docker.IO.\r\n") == "docker.io"
    assert clean_host("127.0.0.1:5000\n") == "127.0.0.1:5000"
    assert clean_host("[::1]:5000") == "[::1]:5000"
    assert clean_host("registry.example.com:443") == "registry.example.com"
    for bad in ("a\r\nSet-Cookie: x", "a b", "a/b", "", "-a.example", "a" * 300, "h:99999999"):
        assert clean_host(bad) is None, bad


def test_an_empty_or_slashed_digest_is_invalid_not_a_missing_endpoint() -> None:
    for path in ("/v2/a/b/blobs/", "/v2/a/b/blobs/sha256:ab/cd", "/v2/a/manifests/sha256:x/y"):
        with pytest.raises(DigestInvalid):
            parse_path(path)
    with pytest.raises(NotFound):
        parse_path("/v2/a/b/manifests/")
