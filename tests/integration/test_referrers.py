"""Referrers through the proxy (distribution-spec 1.1, "Listing Referrers").

The real upstream here is distribution 2.8: it stores a manifest's ``subject`` but
has no referrers API (its answer is 404), so artifacts are listed under the
referrers tag schema (the tag ``sha256-<hex>`` holds an index of them), as cosign,
oras and notation write them for such registries. The API path itself is answered
by the test's forwarder standing in front of the real registry (no registry on this
machine has the API), with the pages a registry with the API would send.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from tests.integration.test_who_reads_what import (
    PRIVATE,
    PUBLIC,
    Upstreams,
    push_private,
    upstreams,  # noqa: F401 (a fixture)
    write_config,
)
from tests.support.clients import run_process
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    PushedImage,
    push_blob,
    push_image,
    push_manifest,
    sha256_digest,
)
from tests.support.proxy import running_proxy

SIGNATURE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SBOM = "application/spdx+json"
EMPTY = "application/vnd.oci.empty.v1+json"


@dataclass(frozen=True)
class Artifact:
    digest: str
    manifest: bytes
    artifact_type: str

    def descriptor(self) -> dict[str, object]:
        return {
            "mediaType": OCI_MANIFEST,
            "digest": self.digest,
            "size": len(self.manifest),
            "artifactType": self.artifact_type,
            "annotations": {"org.opencontainers.image.created": "2026-12-04T00:00:00Z"},
        }


async def push_artifact(
    url: str, repo: str, subject: PushedImage, artifact_type: str, content: bytes,
    headers: dict[str, str] | None = None,
) -> Artifact:  # fmt: skip
    """An OCI 1.1 artifact manifest (``artifactType``, an empty config, one layer of
    ``content``) whose subject is ``subject``, pushed by digest."""
    empty = await push_blob(url, repo, b"{}", headers=headers)
    layer = await push_blob(url, repo, content, headers=headers)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": layer, "size": len(content)}],
            "subject": {
                "mediaType": subject.media_type,
                "digest": subject.digest,
                "size": len(subject.manifest),
            },
        }
    ).encode()
    digest = sha256_digest(manifest)
    await push_manifest(url, repo, digest, manifest, OCI_MANIFEST, headers=headers)
    return Artifact(digest, manifest, artifact_type)


async def push_tag_schema(
    url: str, repo: str, subject: PushedImage, artifacts: list[Artifact],
    headers: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """The referrers tag schema's index, under the tag ``sha256-<hex>``."""
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [a.descriptor() for a in artifacts],
        }
    ).encode()
    tag = subject.digest.replace(":", "-")
    await push_manifest(url, repo, tag, index, OCI_INDEX, headers=headers)


async def referrers_of(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object], dict[str, str]]:
    async with http.get(url, headers=headers or {}) as resp:
        body = await resp.read()
        return resp.status, json.loads(body) if body else {}, dict(resp.headers)


def digests_of(doc: dict[str, object]) -> list[str]:
    manifests = doc.get("manifests")
    assert isinstance(manifests, list)
    return [str(m["digest"]) for m in manifests]


def next_link(headers: dict[str, str]) -> str | None:
    link = headers.get("Link")
    if link is None:
        return None
    found = re.match(r"<([^>]+)>;\s*rel=\"next\"", link)
    assert found is not None, link
    return found[1]


@pytest.fixture
async def signed(upstreams: Upstreams) -> tuple[PushedImage, list[Artifact]]:  # noqa: F811
    repo = f"lib/signed-{uuid.uuid4().hex[:6]}"
    image = await push_image(upstreams.public.url, repo, "v1", layer_sizes=(2000,))
    url = upstreams.public.url
    signature = await push_artifact(url, repo, image, SIGNATURE, b'{"bundle": 1}')
    sbom = await push_artifact(url, repo, image, SBOM, b'{"spdx": 1}')
    await push_tag_schema(url, repo, image, [signature, sbom])
    return image, [signature, sbom]


async def test_the_tag_schema_is_listed_filtered_and_paged(
    upstreams: Upstreams,  # noqa: F811
    signed: tuple[PushedImage, list[Artifact]],
    tmp_path: Path,
) -> None:
    image, (signature, sbom) = signed
    config = write_config(tmp_path, upstreams)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        for base in (
            f"{proxy.url}/v2/{PUBLIC}/{image.name}/referrers/{image.digest}",
            f"{proxy.url}/v2/{image.name}/referrers/{image.digest}?ns={PUBLIC}",
        ):
            status, doc, headers = await referrers_of(http, base)
            assert status == 200
            assert headers["Content-Type"].startswith(OCI_INDEX)
            assert doc["mediaType"] == OCI_INDEX and doc["schemaVersion"] == 2
            assert digests_of(doc) == [signature.digest, sbom.digest]
            assert "OCI-Filters-Applied" not in headers
            # Filtered here (the upstream has no API to filter): the header says so.
            join = "&" if "?" in base else "?"
            status, doc, headers = await referrers_of(
                http, f"{base}{join}artifactType={quote(SBOM, safe='')}"
            )
            assert digests_of(doc) == [sbom.digest]
            assert headers["OCI-Filters-Applied"] == "artifactType"
            # Paged: one at a time, the Link naming the registry as the request did.
            status, doc, headers = await referrers_of(http, f"{base}{join}n=1")
            assert digests_of(doc) == [signature.digest]
            link = next_link(headers)
            assert link is not None
            target = urlsplit(link)
            assert not target.netloc, "the next page is on this proxy"
            assert (PUBLIC in target.path) or (f"ns={PUBLIC}" in target.query)
            status, doc, headers = await referrers_of(http, f"{proxy.url}{link}")
            assert digests_of(doc) == [sbom.digest]
            assert next_link(headers) is None
        # Each referrer and its blobs come through the verified path.
        for artifact in (signature, sbom):
            manifest = f"{proxy.url}/v2/{PUBLIC}/{image.name}/manifests/{artifact.digest}"
            async with http.get(manifest, headers={"Accept": OCI_MANIFEST}) as resp:
                assert resp.status == 200
                assert await resp.read() == artifact.manifest


async def test_no_referrers_is_an_empty_index(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
) -> None:
    repo = f"lib/plain-{uuid.uuid4().hex[:6]}"
    image = await push_image(upstreams.public.url, repo, "v1", layer_sizes=(2000,))
    config = write_config(tmp_path, upstreams)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        url = f"{proxy.url}/v2/{PUBLIC}/{repo}/referrers/{image.digest}"
        status, doc, _ = await referrers_of(http, url)
        assert (status, doc["manifests"]) == (200, [])
        status, doc, _ = await referrers_of(http, f"{url}?artifactType={quote(SBOM, safe='')}")
        assert (status, doc["manifests"]) == (200, [])


async def test_kept_served_stale_and_offline(
    upstreams: Upstreams,  # noqa: F811
    signed: tuple[PushedImage, list[Artifact]],
    tmp_path: Path,
) -> None:
    image, artifacts = signed
    config = write_config(tmp_path, upstreams, "referrers_ttl = 0.2\n")
    cache = tmp_path / "cache"
    path = f"/v2/{PUBLIC}/{image.name}/referrers/{image.digest}"
    async with (
        running_proxy(None, cache, config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        status, doc, _ = await referrers_of(http, proxy.url + path)
        assert digests_of(doc) == [a.digest for a in artifacts]
        # Within the window: kept, the upstream not asked.
        before = upstreams.public.count()
        status, doc, _ = await referrers_of(http, proxy.url + path)
        assert upstreams.public.count() == before
        # Past it, with the upstream failing: the last list, stale.
        upstreams.public.set_fault(Fault(match="/", kind="status", status=503))
        await asyncio.sleep(0.3)
        status, doc, _ = await referrers_of(http, proxy.url + path)
        assert (status, digests_of(doc)) == (200, [a.digest for a in artifacts])
        upstreams.public.clear_faults()
    async with (
        running_proxy(None, cache, config_file=config, offline=True) as proxy,
        aiohttp.ClientSession() as http,
    ):
        before = upstreams.public.count()
        status, doc, _ = await referrers_of(http, proxy.url + path)
        assert (status, digests_of(doc)) == (200, [a.digest for a in artifacts])
        status, doc, _ = await referrers_of(
            http, f"{proxy.url}{path}?artifactType={quote(SBOM, safe='')}"
        )
        assert digests_of(doc) == [artifacts[1].digest]
        assert upstreams.public.count() == before


async def test_a_client_who_may_not_pull_the_subject_gets_no_referrers(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
) -> None:
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}")
    robot = {"Authorization": "Basic cm9ib3Q6cm9ib3QtdXBzdHJlYW0tcGFzc3dvcmQtMQ=="}
    sbom = await push_artifact(upstreams.private.url, secret.name, secret, SBOM, b"{}", robot)
    await push_tag_schema(upstreams.private.url, secret.name, secret, [sbom], robot)
    config = write_config(tmp_path, upstreams)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        url = f"{proxy.url}/v2/{PRIVATE}/{secret.name}/referrers/{secret.digest}"
        async with http.get(url) as resp:
            assert resp.status == 401
            assert b"manifests" not in await resp.read()
        alice = {"Authorization": "Basic YWxpY2U6YWxpY2UtcHJveHktcGFzc3dvcmQtMQ=="}
        status, doc, _ = await referrers_of(http, url, alice)
        assert (status, digests_of(doc)) == (200, [sbom.digest])
        # Under a public repository, the private subject's list is that repository's
        # own (empty): nothing of the private one is told.
        status, doc, _ = await referrers_of(
            http, f"{proxy.url}/v2/{PUBLIC}/lib/other/referrers/{secret.digest}"
        )
        assert (status, doc["manifests"]) == (200, [])


async def test_an_upstream_with_the_api_is_read_page_by_page_and_merged(
    upstreams: Upstreams,  # noqa: F811
    signed: tuple[PushedImage, list[Artifact]],
    tmp_path: Path,
) -> None:
    """A registry with the API (the forwarder answers the referrers path for the real
    registry behind it, in two pages and with the filter applied when asked): its
    pages are read through its own Link and merged with the tag schema's index."""
    image, (signature, sbom) = signed
    extra = f"sha256:{'e' * 64}"
    listed = {
        "mediaType": OCI_MANIFEST,
        "digest": extra,
        "size": 100,
        "artifactType": "application/vnd.cncf.notary.signature",
    }
    first = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [signature.descriptor()]}
    second = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [listed]}
    path = f"/v2/{image.name}/referrers/{image.digest}"
    wire: Forwarder = upstreams.public
    wire.set_fault(
        Fault(
            match=re.compile(re.escape(path) + r"\?page=2"),
            kind="status",
            status=200,
            headers={"Content-Type": OCI_INDEX},
            body=json.dumps(second).encode(),
        )
    )
    wire.set_fault(
        Fault(
            match=re.compile(re.escape(path) + "$"),
            kind="status",
            status=200,
            headers={"Content-Type": OCI_INDEX, "Link": f'<{path}?page=2>; rel="next"'},
            body=json.dumps(first).encode(),
        )
    )
    config = write_config(tmp_path, upstreams)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        url = f"{proxy.url}/v2/{PUBLIC}/{image.name}/referrers/{image.digest}"
        status, doc, _ = await referrers_of(http, url)
        assert (status, digests_of(doc)) == (200, [signature.digest, extra, sbom.digest])
        assert wire.count("GET", path) == 2
    wire.clear_faults()


async def push_cosign_signature(url: str, image: PushedImage) -> bytes:
    """A signature as cosign 2 keeps it: a manifest under ``sha256-<hex>.sig`` whose
    layer is a simple signing payload naming the image (the signature is not checked
    here: what a verifier or the policy does)."""
    repo = image.name
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": f"{PUBLIC}/{repo}"},
                "image": {"docker-manifest-digest": image.digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    layer = await push_blob(url, repo, payload)
    empty = await push_blob(url, repo, b"{}")
    sig = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": empty, "size": 2},
            "layers": [{
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": layer, "size": len(payload),
                "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="},
            }],
        }
    ).encode()  # fmt: skip
    tag = image.digest.replace(":", "-") + ".sig"
    await push_manifest(url, repo, tag, sig, OCI_MANIFEST)
    return sig


async def test_cosigns_older_tag_scheme_works_as_tags(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
) -> None:
    """cosign 2 keeps a signature under the tag ``sha256-<hex>.sig``: an ordinary tag."""
    repo = f"lib/cosign2-{uuid.uuid4().hex[:6]}"
    image = await push_image(upstreams.public.url, repo, "v1", layer_sizes=(2000,))
    sig = await push_cosign_signature(upstreams.public.url, image)
    tag = image.digest.replace(":", "-") + ".sig"
    config = write_config(tmp_path, upstreams)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        base = f"{proxy.url}/v2/{PUBLIC}/{repo}"
        async with http.get(f"{base}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.status == 200 and await resp.read() == sig
        for layer in json.loads(sig)["layers"]:
            async with http.get(f"{base}/blobs/{layer['digest']}") as resp:
                assert resp.status == 200


async def cacheproxy_cli(*args: str) -> str:
    result = await run_process(sys.executable, "-m", "cacheproxy", *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


@pytest.mark.parametrize("referrers", [True, False], ids=["with", "no-referrers"])
async def test_the_air_gap_carries_referrers_and_signatures(
    upstreams: Upstreams,  # noqa: F811
    signed: tuple[PushedImage, list[Artifact]],
    tmp_path: Path,
    referrers: bool,
) -> None:
    """prefetch, export, import into an empty cache, offline: the referrers list (as
    the referrers API and as the tag schema a verifier falls back to) and cosign's
    ``.sig`` tag are there, and ``ls`` shows them under their image; with
    ``--no-referrers`` none of them travel."""
    image, artifacts = signed
    sig = await push_cosign_signature(upstreams.public.url, image)
    config = write_config(tmp_path, upstreams)
    ref = f"{PUBLIC}/{image.name}:v1"
    flags = [] if referrers else ["--no-referrers"]
    first, second = tmp_path / "first", tmp_path / "second"
    base = ["--config", str(config)]
    await cacheproxy_cli("prefetch", *base, "--cache-dir", str(first), *flags, ref)
    bundle = tmp_path / "bundle.tar"
    await cacheproxy_cli("export", *base, "--cache-dir", str(first), *flags, ref, "-o", str(bundle))
    await cacheproxy_cli("import", *base, "--cache-dir", str(second), str(bundle))
    listing = json.loads(await cacheproxy_cli("ls", *base, "--cache-dir", str(second), "--json"))
    tags = {row["tag"]: row for row in listing}
    assert set(tags) == {"v1"}, "the referrers' tags are listed under their image"
    schema = image.digest.replace(":", "-")
    assert sorted(tags["v1"]["referrers"]) == ([schema, f"{schema}.sig"] if referrers else [])
    async with (
        running_proxy(None, second, config_file=config, offline=True) as proxy,
        aiohttp.ClientSession() as http,
    ):
        url = f"{proxy.url}/v2/{PUBLIC}/{image.name}/referrers/{image.digest}"
        status, doc, _ = await referrers_of(http, url)
        assert status == 200
        assert digests_of(doc) == ([a.digest for a in artifacts] if referrers else [])
        manifests = f"{proxy.url}/v2/{PUBLIC}/{image.name}/manifests"
        accept = {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}
        async with http.get(f"{manifests}/{schema}.sig", headers=accept) as resp:
            assert resp.status == (200 if referrers else 404)
            if referrers:
                assert await resp.read() == sig
        async with http.get(f"{manifests}/{schema}", headers=accept) as resp:
            assert resp.status == (200 if referrers else 404)
        for artifact in artifacts if referrers else []:
            async with http.get(f"{manifests}/{artifact.digest}", headers=accept) as resp:
                assert await resp.read() == artifact.manifest
