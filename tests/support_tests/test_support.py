"""Self-tests for tests/support: the real registry, image pushes, skopeo and the forwarder."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import hashlib
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.clients import run_process, skopeo
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Media,
    PushedImage,
    basic_auth,
    push_blob,
    push_blob_stream,
    push_image,
    push_index,
    random_chunks,
    sha256_digest,
)
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name of this test's own on the shared registry."""
    return "selftest/" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")


async def fetch(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def read_until_error(url: str) -> tuple[bytes, BaseException | None]:
    """GET *url*, keeping the bytes that arrived before any transport error."""
    got = bytearray()
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(url) as resp:
                async for chunk in resp.content.iter_any():
                    got += chunk
        except aiohttp.ClientError as exc:
            return bytes(got), exc
    return bytes(got), None


def url_and_bytes(base: str, image: PushedImage, index: int = -1) -> tuple[str, bytes]:
    desc = image.blobs[index]
    return f"{base}/v2/{image.name}/blobs/{desc.digest}", image.blob_data[desc.digest]


# --- registry ---------------------------------------------------------------------------


async def test_registry_stop_start_keeps_port_and_data(fresh_registry: RegistryProcess) -> None:
    image = await push_image(fresh_registry.url, "keep/me", "v1", layer_sizes=[1024])
    url = f"{fresh_registry.url}/v2/keep/me/manifests/v1"
    port = fresh_registry.port
    fresh_registry.stop()
    assert not fresh_registry.running
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(url)
    fresh_registry.start()
    assert fresh_registry.port == port
    status, headers, body = await fetch(url, headers={"Accept": OCI_MANIFEST})
    assert status == 200
    assert body == image.manifest
    assert headers["Docker-Content-Digest"] == image.digest
    assert "GET /v2/keep/me/manifests/v1" in fresh_registry.access_log_path.read_text()


async def test_registry_htpasswd(tmp_path: Path, require_binaries: None) -> None:
    with RegistryProcess(tmp_path, htpasswd=("alice", "s3cret")) as reg:
        status, headers, _ = await fetch(f"{reg.url}/v2/")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Basic ")
        auth = basic_auth("alice", "s3cret")
        image = await push_image(reg.url, "private/img", "v1", layer_sizes=[512], headers=auth)
        status, _, body = await fetch(
            f"{reg.url}/v2/private/img/manifests/v1", headers={**auth, "Accept": OCI_MANIFEST}
        )
        assert (status, body) == (200, image.manifest)


def _self_signed_cert(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cacheproxy-test-token")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


async def test_registry_token_auth_challenge(tmp_path: Path, require_binaries: None) -> None:
    bundle = tmp_path / "token.pem"
    _self_signed_cert(bundle)
    token_auth = {
        "realm": "http://127.0.0.1:1/token",
        "service": "test-registry",
        "issuer": "test-issuer",
        "rootcertbundle": str(bundle),
    }
    with RegistryProcess(tmp_path / "reg", token_auth=token_auth) as reg:
        status, headers, _ = await fetch(f"{reg.url}/v2/some/repo/manifests/latest")
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'realm="http://127.0.0.1:1/token"' in challenge
    assert 'service="test-registry"' in challenge
    assert 'scope="repository:some/repo:pull"' in challenge


async def test_registry_proxy_mode(registry: RegistryProcess, tmp_path: Path, repo: str) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[2048])
    with RegistryProcess(tmp_path, proxy_remoteurl=registry.url) as mirror:
        status, _, body = await fetch(
            f"{mirror.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}
        )
        assert (status, body) == (200, image.manifest)
        url, data = url_and_bytes(mirror.url, image)
        status, _, body = await fetch(url)
        assert (status, body) == (200, data)


# --- images and skopeo ------------------------------------------------------------------


def _check_dir_copy(dest: Path, image: PushedImage) -> None:
    assert (dest / "manifest.json").read_bytes() == image.manifest
    for desc in image.blobs:
        assert (dest / desc.digest.removeprefix("sha256:")).read_bytes() == image.blob_data[
            desc.digest
        ]


@pytest.mark.parametrize(
    ("media", "manifest_type"), [("oci", OCI_MANIFEST), ("docker", DOCKER_MANIFEST)]
)
async def test_push_image_and_skopeo(
    registry: RegistryProcess, repo: str, tmp_path: Path, media: Media, manifest_type: str
) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[4096, 100_000], media=media)
    assert image.media_type == manifest_type
    assert json.loads(image.manifest)["mediaType"] == manifest_type
    # The config's diff_ids are the digests of the uncompressed layer tars.
    config = json.loads(image.blob_data[image.blobs[0].digest])
    assert config["architecture"] == "amd64"
    assert config["rootfs"]["diff_ids"] == [
        sha256_digest(gzip.decompress(image.blob_data[layer.digest])) for layer in image.layers
    ]
    # Random payloads must not compress away.
    assert image.layers[1].size > 100_000

    ref = f"docker://{registry.host}/{repo}:v1"
    rc, out, err = await skopeo("inspect", "--raw", "--tls-verify=false", ref)
    assert rc == 0, err
    assert out == image.manifest
    rc, out, err = await skopeo("inspect", "--tls-verify=false", ref)
    assert rc == 0, err
    assert json.loads(out)["Digest"] == image.digest

    dest = tmp_path / "copy"
    rc, _, err = await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{dest}")
    assert rc == 0, err
    _check_dir_copy(dest, image)


@pytest.mark.parametrize(
    ("media", "index_type"), [("oci", OCI_INDEX), ("docker", DOCKER_MANIFEST_LIST)]
)
async def test_push_index_and_skopeo(
    registry: RegistryProcess, repo: str, tmp_path: Path, media: Media, index_type: str
) -> None:
    index = await push_index(registry.url, repo, "multi", media=media)
    assert index.media_type == index_type
    assert [c.platform for c in index.children] == [("linux", "amd64"), ("linux", "arm64", "v8")]
    assert len({c.digest for c in index.children}) == 2
    assert len(index.all_blobs()) == 4

    ref = f"docker://{registry.host}/{repo}:multi"
    rc, out, err = await skopeo("inspect", "--raw", "--tls-verify=false", ref)
    assert rc == 0, err
    assert out == index.manifest
    child = index.children[1]
    rc, out, err = await skopeo(
        "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{child.reference}"
    )
    assert rc == 0, err
    assert out == child.manifest

    dest = tmp_path / "copy"
    rc, _, err = await skopeo(
        "copy", "--multi-arch=all", "--src-tls-verify=false", ref, f"dir:{dest}"
    )
    assert rc == 0, err
    assert (dest / "manifest.json").read_bytes() == index.manifest
    for child in index.children:
        hex_ = child.digest.removeprefix("sha256:")
        assert (dest / f"{hex_}.manifest.json").read_bytes() == child.manifest
        for desc in child.blobs:
            assert (dest / desc.digest.removeprefix("sha256:")).is_file()


async def test_push_blob_and_stream(registry: RegistryProcess, repo: str) -> None:
    digest = await push_blob(registry.url, repo, b"hello blob")
    status, _, body = await fetch(f"{registry.url}/v2/{repo}/blobs/{digest}")
    assert (status, body) == (200, b"hello blob")

    size = 12 * MIB + 123  # not a multiple of the chunk size
    digest, pushed = await push_blob_stream(
        registry.url, repo, random_chunks(size, "stream", chunk_size=4 * MIB)
    )
    assert pushed == size
    expected = hashlib.sha256(b"".join(random_chunks(size, "stream"))).hexdigest()
    assert digest == f"sha256:{expected}"
    status, headers, _ = await fetch(f"{registry.url}/v2/{repo}/blobs/{digest}", method="HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) == size
    assert headers["Docker-Content-Digest"] == digest


@pytest.mark.wallclock
async def test_run_process_timeout_kills() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await run_process("sleep", "30", timeout=0.3)
    assert time.monotonic() - started < 10


# --- forwarder --------------------------------------------------------------------------


async def test_forwarder_counts_and_forwards_pushes_and_pulls(
    forwarder: Forwarder, registry: RegistryProcess, repo: str, tmp_path: Path
) -> None:
    # Pushing through the forwarder exercises streamed request bodies and the Location
    # rewrite (every PUT of an upload must come back through us).
    image = await push_image(forwarder.url, repo, "v1", layer_sizes=[300_000])
    assert forwarder.count("POST", f"/v2/{repo}/blobs/uploads/") == 2
    assert forwarder.count("PUT", "/blobs/uploads/") == 2
    assert forwarder.count("PUT", f"/v2/{repo}/manifests/v1") == 1

    dest = tmp_path / "copy"
    rc, _, err = await skopeo(
        "copy", "--src-tls-verify=false", f"docker://{forwarder.host}/{repo}:v1", f"dir:{dest}"
    )
    assert rc == 0, err
    _check_dir_copy(dest, image)
    assert forwarder.count("GET", f"/v2/{repo}/manifests/v1") >= 1
    for desc in image.blobs:
        assert forwarder.count("GET", desc.digest) == 1
    assert forwarder.count() == len(forwarder.requests)
    assert forwarder.count("DELETE") == 0


async def test_forwarder_passes_status_and_head(forwarder: Forwarder, repo: str) -> None:
    status, headers, body = await fetch(f"{forwarder.url}/v2/{repo}/manifests/nope")
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    image = await push_image(forwarder.url, repo, "v1", layer_sizes=[1000])
    url, data = url_and_bytes(forwarder.url, image)
    status, headers, body = await fetch(url, method="HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) == len(data)
    assert body == b""


@pytest.mark.wallclock
async def test_forwarder_throttle(
    forwarder: Forwarder, registry: RegistryProcess, repo: str
) -> None:
    digest = await push_blob(registry.url, repo, bytes(range(256)) * 4096)  # 1 MiB
    url = f"{forwarder.url}/v2/{repo}/blobs/{digest}"
    forwarder.throttle_bps = 4 * MIB
    started = time.monotonic()
    status, _, body = await fetch(url)
    assert time.monotonic() - started > 0.1
    assert status == 200
    assert sha256_digest(body) == digest

    # Slow enough to observe mid-flight, then lifted at runtime.
    forwarder.throttle_bps = 64 * 1024
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        first = await resp.content.readexactly(16 * 1024)
        forwarder.throttle_bps = None
        rest = await asyncio.wait_for(resp.content.read(), 10)
    assert sha256_digest(first + rest) == digest


async def test_fault_corrupt(forwarder: Forwarder, registry: RegistryProcess, repo: str) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[200_000])
    url, data = url_and_bytes(forwarder.url, image)
    digest = image.layers[0].digest
    fault = forwarder.set_fault(Fault(match=digest, kind="corrupt", offset=150_000))
    status, _, body = await fetch(url)
    assert status == 200
    assert len(body) == len(data)
    diff = [i for i, (a, b) in enumerate(zip(body, data, strict=True)) if a != b]
    assert diff == [150_000]
    assert fault.hits == 1
    # Other paths are untouched.
    config_url, config = url_and_bytes(forwarder.url, image, 0)
    assert (await fetch(config_url))[2] == config


async def test_fault_truncate(forwarder: Forwarder, registry: RegistryProcess, repo: str) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[200_000])
    url, data = url_and_bytes(forwarder.url, image)
    forwarder.set_fault(Fault(match=image.layers[0].digest, kind="truncate", offset=70_000))
    got, exc = await read_until_error(url)
    assert isinstance(exc, aiohttp.ClientPayloadError)
    assert got == data[:70_000]


async def test_fault_status_once_with_headers(
    forwarder: Forwarder, registry: RegistryProcess, repo: str
) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[1000])
    url, data = url_and_bytes(forwarder.url, image)
    forwarder.set_fault(
        Fault(
            match=re.compile(r"/blobs/sha256:[0-9a-f]{64}$"),
            kind="status",
            status=429,
            headers={"Retry-After": "1"},
            once=True,
        )
    )
    status, headers, _ = await fetch(url)
    assert (status, headers["Retry-After"]) == (429, "1")
    status, _, body = await fetch(url)
    assert (status, body) == (200, data)
    # The failed attempt never reached the upstream, but it is counted here.
    assert forwarder.count("GET", image.layers[0].digest) == 2


async def test_fault_method_filter(
    forwarder: Forwarder, registry: RegistryProcess, repo: str
) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[1000])
    url, _ = url_and_bytes(forwarder.url, image)
    forwarder.set_fault(
        Fault(match="/blobs/", kind="status", status=503, methods=frozenset({"GET"}))
    )
    assert (await fetch(url, method="HEAD"))[0] == 200
    assert (await fetch(url))[0] == 503
    forwarder.clear_faults()
    assert (await fetch(url))[0] == 200


async def test_fault_range_filter(
    forwarder: Forwarder, registry: RegistryProcess, repo: str
) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[1000])
    url, data = url_and_bytes(forwarder.url, image)
    forwarder.set_fault(Fault(match="/blobs/", kind="status", status=503, range_start=500))
    assert (await fetch(url))[0] == 200  # no Range: from byte 0
    assert (await fetch(url, headers={"Range": "bytes=0-99"}))[0] == 206
    assert (await fetch(url, headers={"Range": "bytes=500-"}))[0] == 503
    assert (await fetch(url, headers={"Range": "bytes=500-599"}))[0] == 503
    status, _, body = await fetch(url, headers={"Range": "bytes=501-"})
    assert (status, body) == (206, data[501:])


async def test_fault_stall_then_release(
    forwarder: Forwarder, registry: RegistryProcess, repo: str
) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[300_000])
    url, data = url_and_bytes(forwarder.url, image)
    forwarder.set_fault(
        Fault(match=image.layers[0].digest, kind="stall", offset=100_000, once=True)
    )
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        head = await resp.content.readexactly(100_000)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.read(1), 0.3)
        forwarder.clear_faults()
        rest = await asyncio.wait_for(resp.content.read(), 10)
    assert head + rest == data


@pytest.mark.wallclock
async def test_fault_stall_client_leaves(
    forwarder: Forwarder, registry: RegistryProcess, repo: str
) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[300_000])
    url, _ = url_and_bytes(forwarder.url, image)
    forwarder.set_fault(Fault(match=image.layers[0].digest, kind="stall", offset=0))
    async with aiohttp.ClientSession() as session:
        resp = await session.get(url)
        assert resp.status == 200
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.read(1), 0.2)
        resp.close()  # the client goes away mid-stall
    # The stalled handler was cancelled, so closing the forwarder does not wait on it.
    started = time.monotonic()
    await forwarder.close()
    assert time.monotonic() - started < 3


async def test_fault_reset(forwarder: Forwarder, registry: RegistryProcess, repo: str) -> None:
    image = await push_image(registry.url, repo, "v1", layer_sizes=[1000])
    url, data = url_and_bytes(forwarder.url, image)
    fault = forwarder.set_fault(Fault(match=image.layers[0].digest, kind="reset"))
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(url)
    # aiohttp's client silently retries an idempotent request once when the connection
    # drops before a response, so a once=True reset is invisible to an aiohttp client.
    assert fault.hits == 2
    forwarder.clear_faults()
    assert (await fetch(url))[2] == data


async def test_forwarder_upstream_down_is_502(fresh_registry: RegistryProcess) -> None:
    async with Forwarder(fresh_registry.url) as fwd:
        assert (await fetch(f"{fwd.url}/v2/"))[0] == 200
        fresh_registry.stop()
        assert (await fetch(f"{fwd.url}/v2/"))[0] == 502
        fresh_registry.start()
        assert (await fetch(f"{fwd.url}/v2/"))[0] == 200
