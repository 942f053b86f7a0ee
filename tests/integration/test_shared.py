"""The shared tier: two proxies that are not peers ("two clusters") and one bucket.

A real S3-compatible server (moto in server mode, on loopback) holds the bucket;
the upstream is the real registry behind the counting forwarder, so "0 upstream
blob bytes" is counted where the upstream is, not by the proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.http.keys import SHARED, WRITEBACK
from tests.support.forwarder import Forwarder
from tests.support.images import PushedImage, push_image
from tests.support.names import unique
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.registry import RegistryProcess
from tests.support.s3 import AWS_ENV, MotoS3, shared_table

ACCEPT = {
    "Accept": "application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
}
PREFIX = "cache/v1/blobs/"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
                assert sha256(await resp.read()) == blob.digest


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

    async with running_proxy(None, tmp_path / "b", config_file=config) as b:
        await pull(b.url, image)
        assert b.fills.stats.shared_gets >= len(image.blobs)
        assert b.fills.stats.upstream_gets == 0
        await drained(b)
        # Nothing to write back: it came from the bucket.
        assert b.app[SHARED].stats.uploads == 0
    assert forwarder.body_bytes("GET", "/blobs/") == first
    # The manifest by digest came from the bucket too; only the tag was asked upstream.
    assert forwarder.count("GET", f"/manifests/{image.digest}") == 0
