"""Pulling through the proxy from a real distribution registry, with real skopeo."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aiohttp
import pytest

from tests.support.clients import skopeo
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    PushedImage,
    push_blob,
    push_image,
    push_index,
    sha256_digest,
)
from tests.support.names import unique
from tests.support.proxy import RunningProxy, blob_url, running_proxy
from tests.support.waiting import eventually

ALL_MANIFESTS = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])


async def get_bytes(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    async with http.get(url, headers=headers or {}) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


# --- real client, every manifest kind ---------------------------------------------


@pytest.mark.parametrize("kind", ["oci-image", "docker-image", "oci-index", "docker-list"])
async def test_skopeo_copy_matches_upstream(
    kind: str, registry: object, proxy: RunningProxy, forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("skopeo")
    media = "oci" if kind.startswith("oci") else "docker"
    image: PushedImage
    if kind.endswith("image"):
        image = await push_image(
            forwarder.url, name, "v1", layer_sizes=(300_000, 1_200_000, 50_000), media=media
        )
    else:
        image = await push_index(forwarder.url, name, "v1", media=media)
    ref = f"docker://{proxy.host}/{name}:v1"

    raw = await skopeo("inspect", "--raw", "--tls-verify=false", ref)
    assert raw.check().stdout == image.manifest

    out = tmp_path / "out"
    args = ["copy", "--src-tls-verify=false"]
    if image.is_index:
        args.append("--all")
    (await skopeo(*args, ref, f"dir:{out}")).check()
    assert (out / "manifest.json").read_bytes() == image.manifest
    for blob in image.all_blobs():
        stored = out / blob.digest.split(":")[1]
        assert stored.is_file(), blob.digest
        assert sha256_digest(stored.read_bytes()) == blob.digest
        # Every blob is now in the cache, verified.
        assert sha256_digest(proxy.blob_path(blob.digest).read_bytes()) == blob.digest
    for child in image.children:
        assert (out / f"{child.digest.split(':')[1]}.manifest.json").read_bytes() == child.manifest
    assert proxy.temp_files() == []


async def test_second_pull_is_served_from_cache(
    proxy: RunningProxy, forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("warm")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(200_000,))
    ref = f"docker://{proxy.host}/{name}:v1"
    (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'a'}")).check()
    blob_gets = sum(forwarder.count("GET", f"/blobs/{b.digest}") for b in image.all_blobs())
    assert blob_gets == len(image.all_blobs())
    (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'b'}")).check()
    assert sum(forwarder.count("GET", f"/blobs/{b.digest}") for b in image.all_blobs()) == (
        blob_gets
    )
    # Within the tag freshness window the tag is not even revalidated.
    assert forwarder.count("GET", f"/v2/{name}/manifests/") == 1
    assert forwarder.count("HEAD", f"/v2/{name}/manifests/") == 0


# --- one upstream fetch per blob ------------------------------------------------------


async def test_concurrent_cold_clients_cause_one_upstream_get(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("concurrent")
    data = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32)
    digest = await push_blob(forwarder.url, name, data)
    forwarder.throttle_bps = 6 * 1024 * 1024  # half a second of transfer: all overlap

    results = await asyncio.gather(
        *(get_bytes(http, blob_url(proxy, name, digest)) for _ in range(16))
    )
    for status, body, headers in results:
        assert status == 200
        assert sha256_digest(body) == digest
        assert headers["Docker-Content-Digest"] == digest
    assert forwarder.count("GET", f"/blobs/{digest}") == 1
    await proxy.idle()
    assert proxy.blob_path(digest).read_bytes() == data


async def test_client_disconnect_leaves_complete_verified_blob(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("disconnect")
    data = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    digest = await push_blob(forwarder.url, name, data)
    forwarder.throttle_bps = 8 * 1024 * 1024

    async with http.get(blob_url(proxy, name, digest)) as resp:
        assert resp.status == 200
        first = await resp.content.readexactly(64 * 1024)
        assert first == data[: 64 * 1024]
        resp.close()  # the client goes away mid-blob
    assert proxy.fills.active == 1
    await proxy.idle()
    assert sha256_digest(proxy.blob_path(digest).read_bytes()) == digest
    assert proxy.temp_files() == []
    assert forwarder.count("GET", f"/blobs/{digest}") == 1


# --- ranges ---------------------------------------------------------------------------


async def test_ranges_on_cold_filling_and_warm_blobs(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("ranges")
    data = hashlib.sha512(b"r").digest() * (4 * 1024 * 1024 // 64) + b"tail"
    size = len(data)
    digest = await push_blob(forwarder.url, name, data)
    url = blob_url(proxy, name, digest)
    forwarder.throttle_bps = 8 * 1024 * 1024

    # Cold: the range starts the fill; its bytes stream as they land, and its last
    # byte follows once the whole blob has been verified.
    async with http.get(url, headers={"Range": "bytes=1000-1999"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 1000-1999/{size}"
        head = await resp.content.readexactly(999)
        assert head == data[1000:1999]
        assert proxy.fills.active == 1  # streamed while the fill runs
        assert await resp.content.read() == data[1999:2000]
    assert proxy.blob_path(digest).exists()

    # Filling: ranges joined to a running fill (a second blob) wait for their bytes
    # and end after verification; a suffix range takes the blob's last byte.
    other = hashlib.sha512(b"r2").digest() * (4 * 1024 * 1024 // 64)
    other_digest = await push_blob(forwarder.url, name, other)
    other_url = blob_url(proxy, name, other_digest)
    whole = asyncio.create_task(get_bytes(http, other_url))
    await eventually(lambda: proxy.fills.active, timeout=10, what="the second blob's fill")
    osize = len(other)
    near_end, suffix = await asyncio.gather(
        get_bytes(http, other_url, {"Range": f"bytes={osize - 5000}-{osize - 4001}"}),
        get_bytes(http, other_url, {"Range": "bytes=-10"}),
    )
    assert (near_end[0], near_end[1]) == (206, other[osize - 5000 : osize - 4000])
    assert (suffix[0], suffix[1]) == (206, other[-10:])
    assert suffix[2]["Content-Range"] == f"bytes {osize - 10}-{osize - 1}/{osize}"
    assert (await whole)[1] == other
    assert forwarder.count("GET", f"/blobs/{other_digest}") == 1
    await proxy.idle()

    # Warm.
    forwarder.throttle_bps = None
    cases = {
        "bytes=0-0": data[:1],
        f"bytes={size - 1}-": data[-1:],
        "bytes=100-": data[100:],
        f"bytes=10-{size * 2}": data[10:],
        "bytes=-1": data[-1:],
    }
    for header, expected in cases.items():
        status, body, _ = await get_bytes(http, url, {"Range": header})
        assert (status, body) == (206, expected), header
    # Ignored (RFC 9110 section 14.2): multiple ranges, malformed.
    for header in ["bytes=0-1,5-6", "bytes=9-3", "lines=1-2"]:
        status, body, _ = await get_bytes(http, url, {"Range": header})
        assert (status, body) == (200, data), header
    status, body, headers = await get_bytes(http, url, {"Range": f"bytes={size}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{size}"
    assert json.loads(body)["errors"][0]["code"] == "RANGE_INVALID"
    assert forwarder.count("GET", f"/blobs/{digest}") == 1


# --- faults: nothing unverified is kept -------------------------------------------------


async def test_wrong_bytes_from_upstream_are_never_cached_or_cleanly_served(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("corrupt")
    data = b"\x5a" * (2 * 1024 * 1024)
    digest = await push_blob(forwarder.url, name, data)
    forwarder.set_fault(Fault(match=digest, kind="corrupt", offset=len(data) // 2))

    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(blob_url(proxy, name, digest)) as resp:
            assert resp.status == 200
            await resp.read()
    await proxy.idle()
    assert not proxy.blob_path(digest).exists()
    assert proxy.temp_files() == []
    assert proxy.fills.stats.digest_mismatches == 1

    # Once the upstream behaves, the blob is fetched again and served whole.
    forwarder.clear_faults()
    status, body, _ = await get_bytes(http, blob_url(proxy, name, digest))
    assert (status, body == data) == (200, True)
    assert proxy.blob_path(digest).read_bytes() == data


async def test_truncated_upstream_body_is_resumed_with_range(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("truncate")
    data = hashlib.sha256(b"t").digest() * (2 * 1024 * 1024 // 32)
    digest = await push_blob(forwarder.url, name, data)
    forwarder.set_fault(
        Fault(match=digest, kind="truncate", offset=700_000, once=True, methods=frozenset({"GET"}))
    )
    status, body, _ = await get_bytes(http, blob_url(proxy, name, digest))
    assert status == 200
    assert body == data
    assert forwarder.count("GET", f"/blobs/{digest}") == 2
    assert proxy.fills.stats.resumed == 1
    assert proxy.blob_path(digest).read_bytes() == data


@pytest.mark.parametrize(
    ("status", "headers", "code"),
    [
        (429, {"Retry-After": "17"}, "TOOMANYREQUESTS"),
        (503, {}, "UNAVAILABLE"),
        (404, {}, "MANIFEST_UNKNOWN"),
        (401, {}, "UNAUTHORIZED"),
        (403, {}, "DENIED"),
    ],
)
async def test_upstream_errors_map_to_oci_errors(
    status: int,
    headers: dict[str, str],
    code: str,
    proxy: RunningProxy,
    forwarder: Forwarder,
    http: aiohttp.ClientSession,
) -> None:
    name = unique("errors")
    forwarder.set_fault(Fault(match=f"/v2/{name}/", kind="status", status=status, headers=headers))
    async with http.get(
        f"{proxy.url}/v2/{name}/manifests/v1", headers={"Accept": ALL_MANIFESTS}
    ) as resp:
        body = await resp.json()
        assert body["errors"][0]["code"] == code
        assert resp.status == (status if status != 401 else 401)
        for key, value in headers.items():
            assert resp.headers[key] == value


async def test_unknown_blob_and_manifest(proxy: RunningProxy, http: aiohttp.ClientSession) -> None:
    name = unique("missing")
    status, body, _ = await get_bytes(http, blob_url(proxy, name, sha256_digest(b"nothing")))
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    async with http.head(blob_url(proxy, name, sha256_digest(b"nothing"))) as resp:
        assert resp.status == 404
    status, body, _ = await get_bytes(http, f"{proxy.url}/v2/{name}/manifests/nope")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert proxy.temp_files() == []


# --- manifests, tags, Accept ------------------------------------------------------------


async def test_manifest_headers_and_accept_negotiation(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("accept")
    index = await push_index(forwarder.url, name, "multi", media="oci")
    url = f"{proxy.url}/v2/{name}/manifests/multi"
    async with http.get(url, headers={"Accept": ALL_MANIFESTS}) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert body == index.manifest
        assert resp.headers["Content-Type"] == OCI_INDEX
        assert resp.headers["Docker-Content-Digest"] == index.digest
        assert resp.headers["Content-Length"] == str(len(index.manifest))
    async with http.head(url, headers={"Accept": ALL_MANIFESTS}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(index.manifest))
        assert resp.headers["Docker-Content-Digest"] == index.digest
    # A client that cannot take an OCI index never gets one.
    async with http.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    # By digest, a child manifest.
    child = index.children[0]
    async with http.get(
        f"{proxy.url}/v2/{name}/manifests/{child.digest}", headers={"Accept": ALL_MANIFESTS}
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == child.manifest
        assert resp.headers["Content-Type"] == OCI_MANIFEST


async def test_tag_revalidation_uses_head_and_follows_upstream_changes(
    forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name = unique("retag")
    first = await push_image(forwarder.url, name, "latest", layer_sizes=(1000,), seed="a")
    async with running_proxy(forwarder.url, tmp_path / "cache", tag_ttl=0) as proxy:
        url = f"{proxy.url}/v2/{name}/manifests/latest"
        headers = {"Accept": ALL_MANIFESTS}
        for _ in range(3):
            status, body, _ = await get_bytes(http, url, headers)
            assert (status, body) == (200, first.manifest)
        # One GET to learn the tag; later requests only HEAD (not a Docker Hub pull).
        assert forwarder.count("GET", f"/v2/{name}/manifests/latest") == 1
        assert forwarder.count("HEAD", f"/v2/{name}/manifests/latest") == 2

        second = await push_image(forwarder.url, name, "latest", layer_sizes=(1000,), seed="b")
        status, body, resp_headers = await get_bytes(http, url, headers)
        assert (status, body) == (200, second.manifest)
        assert resp_headers["Docker-Content-Digest"] == second.digest


async def test_concurrent_tag_resolutions_collapse(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("collapse")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(1000,))
    stall = forwarder.set_fault(
        Fault(match=f"/v2/{name}/manifests/v1", kind="stall", offset=10, methods=frozenset({"GET"}))
    )
    url = f"{proxy.url}/v2/{name}/manifests/v1"
    before = proxy.requests_started()
    requests = [
        asyncio.create_task(get_bytes(http, url, {"Accept": ALL_MANIFESTS})) for _ in range(12)
    ]
    await eventually(
        lambda: stall.hits and proxy.requests_started() >= before + 12,
        timeout=10,
        what="every request arrived while the one upstream GET is held",
    )
    stall.release()
    for status, body, _ in await asyncio.gather(*requests):
        assert (status, body) == (200, image.manifest)
    assert forwarder.count("GET", f"/v2/{name}/manifests/v1") == 1
    assert forwarder.count("HEAD", f"/v2/{name}/manifests/v1") == 0


async def test_tags_list_pagination(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("tags")
    image = await push_image(forwarder.url, name, "a", layer_sizes=(100,))
    for tag in ["b", "c", "d"]:
        async with http.put(
            f"{forwarder.url}/v2/{name}/manifests/{tag}",
            data=image.manifest,
            headers={"Content-Type": image.media_type},
        ) as resp:
            assert resp.status == 201
    async with http.get(f"{proxy.url}/v2/{name}/tags/list?n=2") as resp:
        assert resp.status == 200
        assert (await resp.json())["tags"] == ["a", "b"]
        link = resp.headers["Link"]
    assert link.startswith(f"</v2/{name}/tags/list?") and 'rel="next"' in link
    async with http.get(proxy.url + link[1 : link.index(">")]) as resp:
        assert (await resp.json())["tags"] == ["c", "d"]
    async with http.get(f"{proxy.url}/v2/{name}/tags/list?n=x") as resp:
        assert resp.status == 400
    async with http.get(f"{proxy.url}/v2/{unique('nope')}/tags/list") as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_stale_tag_and_cached_blobs_served_when_upstream_is_down(
    fresh_registry: object, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    from tests.support.registry import RegistryProcess

    assert isinstance(fresh_registry, RegistryProcess)
    name = unique("offline")
    image = await push_image(fresh_registry.url, name, "v1", layer_sizes=(5000,))
    async with running_proxy(fresh_registry.url, tmp_path / "cache", tag_ttl=0) as proxy:
        headers = {"Accept": ALL_MANIFESTS}
        url = f"{proxy.url}/v2/{name}/manifests/v1"
        assert (await get_bytes(http, url, headers))[1] == image.manifest
        for blob in image.all_blobs():
            assert (await get_bytes(http, blob_url(proxy, name, blob.digest)))[0] == 200
        fresh_registry.stop()
        status, body, _ = await get_bytes(http, url, headers)
        assert (status, body) == (200, image.manifest)
        for blob in image.all_blobs():
            status, body, _ = await get_bytes(http, blob_url(proxy, name, blob.digest))
            assert (status, sha256_digest(body)) == (200, blob.digest)
        status, body, _ = await get_bytes(http, f"{proxy.url}/v2/{name}/manifests/v2", headers)
        assert status == 503
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
