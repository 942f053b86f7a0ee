"""The shared tier: two proxies that are not peers ("two clusters") and one bucket.

A real S3-compatible server (moto in server mode, on loopback) holds the bucket;
the upstream is the real registry behind the counting forwarder, so "0 upstream
blob bytes" is counted where the upstream is, not by the proxy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.accounting import NullAccounting
from cacheproxy.config import load_config
from cacheproxy.http.keys import SHARED, WRITEBACK
from cacheproxy.layout import CacheLayout
from cacheproxy.oci import parse_digest
from cacheproxy.savings import db
from cacheproxy.savings.db import Counts
from cacheproxy.shared.lifecycle import sweep_uploads
from cacheproxy.shared.s3 import S3
from cacheproxy.shared.tier import SharedTier
from cacheproxy.shared.writeback import WriteBack
from cacheproxy.store.files import BlobStore
from cacheproxy.store.index import Index
from cacheproxy.upstream.aws import AwsClients
from cacheproxy.upstream.credentials import boto3_ecr_client
from tests.support.clients import run_process, skopeo
from tests.support.cluster import start_cluster
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import PushedImage, push_blob, push_image, random_bytes, sha256_digest
from tests.support.names import unique
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.registry import RegistryProcess
from tests.support.s3 import AWS_ENV, PREFIX, MotoS3, object_key, shared_table
from tests.support.waiting import eventually

ACCEPT = {
    "Accept": "application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
}
# Every proxy here talks to moto's S3 with the keys it accepts.
pytestmark = pytest.mark.usefixtures("aws_env")


def write_config(path: Path, upstream: str, endpoint: str, bucket: str, **shared: object) -> Path:
    path.write_text(
        f'presets = []\n[[upstream]]\nname = "registry.test"\nurl = "{upstream}"\n'
        + shared_table(endpoint, bucket, **shared)
    )
    return path


async def pull(url: str, image: PushedImage, repo_host: str = "registry.test") -> None:
    """A client's pull: the manifest by tag, then every blob, each checked."""
    base = f"{url}/v2/{repo_host}/{image.name}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/manifests/{image.tag}", headers=ACCEPT) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.read() == image.manifest
        for blob in image.blobs:
            async with http.get(f"{base}/blobs/{blob.digest}") as resp:
                assert resp.status == 200, await resp.text()
                assert sha256_digest(await resp.read()) == blob.digest


@pytest.fixture
async def cluster_a(
    tmp_path: Path, forwarder: Forwarder, moto: MotoS3
) -> AsyncIterator[tuple[Path, str]]:
    """A config for "cluster" proxies over one new bucket; yields (config, bucket)."""
    bucket = moto.new_bucket()
    config = write_config(
        tmp_path / "shared.toml",
        forwarder.url,
        moto.url,
        bucket,
        multipart_threshold="5MiB",
        part_size="5MiB",
    )
    yield config, bucket


def ledger_totals(cache: Path) -> Counts:
    conn = db.open_reader(cache / "ledger.db")
    assert conn is not None
    try:
        return db.by_upstream(conn)["registry.test"]
    finally:
        conn.close()


async def drained(proxy: RunningProxy) -> None:
    async with asyncio.timeout(60):
        await proxy.app[WRITEBACK].drained()


async def test_the_second_cluster_pulls_nothing_from_the_upstream(
    registry: RegistryProcess,
    forwarder: Forwarder,
    moto: MotoS3,
    cluster_a: tuple[Path, str],
    tmp_path: Path,
) -> None:
    config, bucket = cluster_a
    # One layer above the multipart threshold (three parts), one below.
    image = await push_image(
        registry.url, unique("shared/app"), "v1", layer_sizes=(300_000, 12_000_000)
    )
    async with running_proxy(None, tmp_path / "a", config_file=config) as a:
        await pull(a.url, image)
        await drained(a)
        assert a.app[SHARED].stats.uploads == len(image.blobs) + 1
    first = forwarder.body_bytes("GET", "/blobs/")
    assert first == sum(b.size for b in image.blobs)
    stored = moto.keys(bucket, PREFIX)
    for digest in [image.digest, *(b.digest for b in image.blobs)]:
        algorithm, hexpart = digest.split(":")
        assert f"{PREFIX}{algorithm}/{hexpart}" in stored
    # Nothing half-written: no multipart upload left open.
    assert not moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads")

    gets_before = forwarder.count("GET", "/manifests/")
    async with running_proxy(None, tmp_path / "b", config_file=config) as b:
        await pull(b.url, image)
        b_stats_hits = b.app[SHARED].stats.hits
        assert b.fills.stats.shared_gets >= len(image.blobs)
        assert b.fills.stats.upstream_gets == 0
        await drained(b)
        # Nothing to write back: it came from the bucket.
        assert b.app[SHARED].stats.uploads == 0
    assert forwarder.body_bytes("GET", "/blobs/") == first
    # The ledgers: the first cluster wrote, the second was served from the bucket.
    everything = sum(b.size for b in image.blobs) + len(image.manifest)
    wrote = ledger_totals(tmp_path / "a")
    assert wrote.shared_put_bytes == everything
    assert wrote.shared_put_requests >= len(image.blobs) + 1
    read = ledger_totals(tmp_path / "b")
    assert read.served_shared == everything
    assert read.shared_get_bytes == everything
    assert read.served_upstream == 0 and read.upstream_bytes == 0
    # The manifest came from the bucket too: the tag was asked upstream with a HEAD,
    # which a registry does not count as a pull.
    assert forwarder.count("GET", "/manifests/") == gets_before
    assert b_stats_hits >= len(image.blobs) + 1


async def get_blob(url: str, image: PushedImage, digest: str) -> bytes:
    blob_url = f"{url}/v2/registry.test/{image.name}/blobs/{digest}"
    async with aiohttp.ClientSession() as http, http.get(blob_url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def test_a_wrong_object_in_the_bucket_is_caught_deleted_and_replaced(
    registry: RegistryProcess,
    forwarder: Forwarder,
    moto: MotoS3,
    cluster_a: tuple[Path, str],
    tmp_path: Path,
) -> None:
    config, bucket = cluster_a
    image = await push_image(registry.url, unique("shared/bad"), "v1", layer_sizes=(2_000_000,))
    layer = image.layers[0]
    async with running_proxy(None, tmp_path / "a", config_file=config) as a:
        await pull(a.url, image)
        await drained(a)
    # Someone with write access to the bucket swaps one byte of the layer.
    s3 = moto.client()
    data = bytearray(image.blob_data[layer.digest])
    data[len(data) // 2] ^= 0xFF
    await asyncio.to_thread(
        s3.put_object, Bucket=bucket, Key=object_key(layer.digest), Body=bytes(data)
    )
    upstream_before = forwarder.body_bytes("GET", f"/blobs/{layer.digest}")

    async with running_proxy(None, tmp_path / "b", config_file=config) as b:
        await pull_manifest(b.url, image)
        async with aiohttp.ClientSession() as http:
            url = f"{b.url}/v2/registry.test/{image.name}/blobs/{layer.digest}"
            # The wrong bytes never end cleanly: the last byte waits for verification.
            with pytest.raises(aiohttp.ClientPayloadError):
                async with http.get(url) as resp:
                    await resp.read()
        tier = b.app[SHARED]
        assert tier.stats.bad_objects == 1
        await eventually(lambda: tier.stats.deleted_bad, timeout=30, what="the bad object deleted")
        assert object_key(layer.digest) not in moto.keys(bucket, PREFIX)
        assert not b.blob_path(layer.digest).exists()
        # The retry gets the upstream's bytes, and the bucket gets them back.
        assert sha256_digest(await get_blob(b.url, image, layer.digest)) == layer.digest
        assert forwarder.body_bytes("GET", f"/blobs/{layer.digest}") - upstream_before == layer.size
        await drained(b)
    fixed = await asyncio.to_thread(s3.get_object, Bucket=bucket, Key=object_key(layer.digest))
    assert sha256_digest(fixed["Body"].read()) == layer.digest


async def pull_manifest(url: str, image: PushedImage) -> None:
    async with aiohttp.ClientSession() as http:
        base = f"{url}/v2/registry.test/{image.name}"
        async with http.get(f"{base}/manifests/{image.tag}", headers=ACCEPT) as resp:
            assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("fault", ["stopped", "403", "503", "slow"])
async def test_a_failing_bucket_costs_the_upstream_never_the_client(
    registry: RegistryProcess,
    forwarder: Forwarder,
    tmp_path: Path,
    fault: str,
) -> None:
    image = await push_image(registry.url, unique("shared/down"), "v1", layer_sizes=(3_000_000,))
    layer = image.layers[0]
    with MotoS3(tmp_path) as moto:
        bucket = moto.new_bucket()
        async with Forwarder(moto.url) as wire:
            config = write_config(
                tmp_path / "s.toml", forwarder.url, wire.url, bucket, read_timeout=1.0
            )
            async with running_proxy(None, tmp_path / "a", config_file=config) as a:
                await pull(a.url, image)
                await drained(a)
            before = forwarder.body_bytes("GET", f"/blobs/{layer.digest}")
            key = object_key(layer.digest)
            async with running_proxy(None, tmp_path / "b", config_file=config) as b:
                await pull_manifest(b.url, image)
                if fault == "stopped":
                    # The bucket goes away mid-transfer: half the layer came from it.
                    stall = wire.set_fault(Fault(key, "stall", offset=layer.size // 2))
                    got = asyncio.create_task(get_blob(b.url, image, layer.digest))
                    await eventually(
                        lambda: wire._stalling, timeout=30, what="the transfer stalled"
                    )
                    await asyncio.to_thread(moto.stop)
                    assert wire.sever() >= 1
                    stall.release()
                    data = await got
                else:
                    if fault == "slow":
                        wire.set_fault(Fault(key, "stall", offset=0, methods=frozenset({"GET"})))
                    else:
                        wire.set_fault(Fault(key, "status", status=int(fault)))
                    data = await get_blob(b.url, image, layer.digest)
                assert sha256_digest(data) == layer.digest
                faults = b.app[SHARED].stats.faults
                expected = {"stopped": "server-error", "403": "denied", "503": "server-error",
                            "slow": "broken-body"}[fault]  # fmt: skip
                assert faults[expected] >= 1, faults
                async with aiohttp.ClientSession() as http, http.get(f"{b.url}/metrics") as resp:
                    metrics = await resp.text()
                assert f'cacheproxy_shared_faults_total{{kind="{expected}"}}' in metrics
                fetched = forwarder.body_bytes("GET", f"/blobs/{layer.digest}") - before
                if fault == "stopped":
                    # Only the rest came from the upstream, asked with a Range.
                    assert 0 < fetched < layer.size
                    assert forwarder.ranges("GET", f"/blobs/{layer.digest}")[-1] is not None
                else:
                    assert fetched == layer.size
                wire.clear_faults()


def gc_keys(output: bytes) -> list[str]:
    lines = output.decode().splitlines()
    return sorted(line.split()[0] for line in lines if line.startswith("  "))


async def test_gc_shared_dry_run_lists_what_gc_shared_deletes(
    forwarder: Forwarder, moto: MotoS3, tmp_path: Path
) -> None:
    bucket = moto.new_bucket()
    s3 = moto.client()
    blobs = [f"{PREFIX}sha256/{i:064x}" for i in range(3)]
    others = ["cache/v1/notes.txt", "elsewhere/blobs/sha256/" + "a" * 64]
    for key in [*blobs, *others]:
        await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=b"x" * 10)
    env = {**AWS_ENV, "CACHEPROXY_CACHE_DIR": str(tmp_path / "cache")}

    async def gc(expire_days: float, *flags: str) -> list[str]:
        config = write_config(
            tmp_path / "gc.toml", forwarder.url, moto.url, bucket, expire_days=expire_days
        )
        argv = [sys.executable, "-m", "cacheproxy", "gc", "--shared", "--config", str(config)]
        result = (await run_process(*argv, *flags, env=env)).check()
        return gc_keys(result.stdout)

    # Nothing is that old yet.
    assert await gc(30, "--dry-run") == []
    planned = await gc(0, "--dry-run")
    assert planned == sorted(blobs)
    assert set(moto.keys(bucket)) == {*blobs, *others}  # a dry run deletes nothing
    assert await gc(0) == planned
    assert set(moto.keys(bucket)) == set(others)  # only blobs under the prefix went


async def test_redirect_mode_with_skopeo(
    registry: RegistryProcess, forwarder: Forwarder, moto: MotoS3, tmp_path: Path
) -> None:
    """A central mirror sends clients to the bucket: skopeo follows the 307s and gets
    every blob from there, verified by its own digest checks."""
    bucket = moto.new_bucket()
    config = write_config(tmp_path / "r.toml", forwarder.url, moto.url, bucket, redirect=True)
    image = await push_image(registry.url, unique("shared/redir"), "v1", layer_sizes=(200_000,))
    async with running_proxy(None, tmp_path / "mirror", config_file=config) as mirror:
        # Not in the bucket yet: served by the proxy, then written back.
        await pull(mirror.url, image)
        assert mirror.app[SHARED].stats.redirects == 0
        await drained(mirror)
        before = forwarder.body_bytes("GET", "/blobs/")
        ref = f"docker://{mirror.host}/registry.test/{image.name}:v1"
        (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'out'}")).check()
        assert mirror.app[SHARED].stats.redirects == len(image.blobs)
        assert forwarder.body_bytes("GET", "/blobs/") == before
    for blob in image.blobs:
        assert (
            sha256_digest((tmp_path / "out" / blob.digest.split(":")[1]).read_bytes())
            == blob.digest
        )


async def test_redirects_show_the_key_of_the_redirect_profile(
    forwarder: Forwarder, moto: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A presigned URL names its access key id (X-Amz-Credential), never its secret:
    with redirect_profile the key clients see is that profile's (a read-only one),
    while the tier reads and writes with its own."""
    reader_key, reader_secret = "AKIAREADONLYEXAMPLE1", "read-only-secret-never-shown"
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[reader]\naws_access_key_id = {reader_key}\naws_secret_access_key = {reader_secret}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    bucket = moto.new_bucket()
    settings = {"redirect": True, "redirect_profile": "reader"}
    config = write_config(tmp_path / "r.toml", forwarder.url, moto.url, bucket, **settings)
    name = unique("shared/key")
    data = random_bytes(100_000, name)
    digest = sha256_digest(data)
    await push_blob(forwarder.url, name, data)
    url = f"/v2/registry.test/{name}/blobs/{digest}"
    async with (
        running_proxy(None, tmp_path / "mirror", config_file=config) as mirror,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(mirror.url + url) as resp:  # served, then written back
            assert resp.status == 200 and await resp.read() == data
        await drained(mirror)
        async with http.get(mirror.url + url, allow_redirects=False) as resp:
            assert resp.status == 307
            location = resp.headers["Location"]
        async with http.get(location) as resp:  # the client follows it to the bucket
            assert resp.status == 200 and await resp.read() == data
    credential = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["X-Amz-Credential"]
    key_id = credential[0].split("/")[0]
    # Not the tier's own key (the environment's), which reads and writes the bucket.
    assert key_id == reader_key != AWS_ENV["AWS_ACCESS_KEY_ID"]
    assert reader_secret not in location and AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in location


async def test_in_a_cluster_one_bucket_request_per_miss(
    registry: RegistryProcess, forwarder: Forwarder, moto: MotoS3, tmp_path: Path
) -> None:
    """Every node pulls; only each digest's owner asks the bucket: one GET (its 404
    is the miss), no HEAD before the write-back, one upstream GET per cluster."""
    secret = tmp_path / "peer-secret"
    secret.write_bytes(b"cluster-secret-for-the-shared-tier-0123\n")
    bucket = moto.new_bucket()
    name = unique("shared/cluster")
    image = await push_image(registry.url, name, "v1", layer_sizes=(200_000, 300_000))
    async with Forwarder(moto.url) as wire, AsyncExitStack() as stack:
        config = tmp_path / "c.toml"
        config.write_text(shared_table(wire.url, bucket))
        nodes = await start_cluster(stack, forwarder.url, tmp_path, secret, 3, config_file=config)
        for node in nodes:
            base = f"{node.url}/v2/{name}"
            async with aiohttp.ClientSession() as http:
                for blob in image.blobs:
                    async with http.get(f"{base}/blobs/{blob.digest}") as resp:
                        assert resp.status == 200
                        assert sha256_digest(await resp.read()) == blob.digest
        for node in nodes:
            await drained(node)
        for blob in image.blobs:
            key = "cache/v1/blobs/sha256/" + blob.digest.split(":")[1]
            assert wire.count("GET", key) == 1, wire.requests
            assert wire.count("HEAD", key) == 0
            assert wire.count("PUT", key) == 1
            assert forwarder.count("GET", f"/blobs/{blob.digest}") == 1


async def test_a_failed_multipart_upload_is_aborted_then_retried(
    registry: RegistryProcess, moto: MotoS3, tmp_path: Path
) -> None:
    """Never half-visible: a part that fails aborts the upload (no object, no upload
    left open), and the retry writes the whole object."""
    bucket = moto.new_bucket()
    data = random_bytes(12 * 1024 * 1024, "multipart")
    digest = parse_digest(sha256_digest(data))
    store = BlobStore(CacheLayout(tmp_path / "cache"))
    await asyncio.to_thread(store.prepare)
    await asyncio.to_thread(store.put, digest, data)
    async with Forwarder(moto.url) as wire:
        settings = load_config(
            file=write_config(
                tmp_path / "m.toml", "http://127.0.0.1:9", wire.url, bucket,
                multipart_threshold="5MiB", part_size="5MiB",
            ),
            env={}, flags={},
        ).shared  # fmt: skip
        assert settings is not None
        aws = AwsClients(boto3_ecr_client)
        tier = SharedTier(S3(settings, aws), settings)
        writeback = WriteBack(tier, store, NullAccounting(), retry_delay=0.2)
        fault = wire.set_fault(Fault("partNumber=2", "status", status=500, once=True))
        try:
            writeback.start()
            assert writeback.blob(digest, "registry.test", "repo")
            await eventually(
                lambda: tier.stats.upload_failures, timeout=60, what="the upload failed"
            )
            assert fault.hits == 1
            assert wire.count("DELETE", "uploadId=") == 1  # aborted
            async with asyncio.timeout(60):
                await writeback.drained()
        finally:
            await writeback.close()
            await tier.close()
            aws.close()
    got = await asyncio.to_thread(moto.client().get_object, Bucket=bucket, Key=tier.key(digest))
    assert got["Body"].read() == data
    assert not moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert tier.stats.uploads == 1 and tier.stats.upload_failures == 1


async def test_abandoned_multipart_uploads_are_swept(moto: MotoS3, tmp_path: Path) -> None:
    bucket = moto.new_bucket()
    client = moto.client()
    for i in range(3):
        await asyncio.to_thread(
            client.create_multipart_upload, Bucket=bucket, Key=f"{PREFIX}sha256/{i:064x}"
        )
    await asyncio.to_thread(client.create_multipart_upload, Bucket=bucket, Key="other/key")
    settings = load_config(
        file=write_config(tmp_path / "s.toml", "http://127.0.0.1:9", moto.url, bucket),
        env={},
        flags={},
    ).shared
    assert settings is not None
    aws = AwsClients(boto3_ecr_client)
    tier = SharedTier(S3(settings, aws), settings)
    try:
        # moto stamps every upload with one fixed time: judge by the time it says.
        listed = await asyncio.to_thread(client.list_multipart_uploads, Bucket=bucket)
        started = listed["Uploads"][0]["Initiated"]
        # An hour after they started: another proxy may still be uploading them.
        assert await sweep_uploads(tier, started + dt.timedelta(hours=1)) == 0
        # A day later they are abandoned; only those under the prefix are touched.
        assert await sweep_uploads(tier, started + dt.timedelta(days=1, minutes=1)) == 3
    finally:
        await tier.close()
        aws.close()
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["other/key"]


async def test_a_manifests_media_type_comes_from_its_bytes_not_the_objects_metadata(
    tmp_path: Path, forwarder: Forwarder, moto: MotoS3
) -> None:
    """Whoever may write to the bucket sets an object's Content-Type: a manifest read
    from there gets the type its verified bytes say; and a type kept wrong before (in
    the index, for good) is corrected by the bytes it is served with."""
    bucket = moto.new_bucket()
    config = write_config(tmp_path / "c.toml", forwarder.url, moto.url, bucket)
    image = await push_image(forwarder.url, unique("typed"), "v1", layer_sizes=(1000,))
    algorithm, hexpart = image.digest.split(":")
    s3 = moto.client()
    s3.put_object(
        Bucket=bucket,
        Key=f"{PREFIX}{algorithm}/{hexpart}",
        Body=image.manifest,
        ContentType="application/vnd.oci.image.index.v1+json",
    )
    url = f"/v2/registry.test/{image.name}/manifests/{image.digest}"
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        gets = forwarder.count("GET", f"/manifests/{image.digest}")
        async with http.get(proxy.url + url, headers=ACCEPT) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == image.media_type
            assert await resp.read() == image.manifest
        assert forwarder.count("GET", f"/manifests/{image.digest}") == gets  # the bucket's
        assert proxy.app[SHARED].stats.hits == 1
    # An index that kept a wrong type (as a peer's unsigned header once set it).
    index = Index(CacheLayout(tmp_path / "cache").index)
    try:
        index.set_manifest_type_sync(image.digest, "application/vnd.oci.image.index.v1+json")
    finally:
        index.close()
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
        http.get(proxy.url + url, headers=ACCEPT) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == image.media_type
