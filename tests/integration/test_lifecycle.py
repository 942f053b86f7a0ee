"""Cache lifecycle: eviction, gc, inventory, offline serving, air-gapped transfer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.http.keys import KEEPER
from cacheproxy.sizes import DiskSpace
from cacheproxy.store.files import BlobStore
from tests.support.clients import run_process, skopeo
from tests.support.forwarder import Forwarder
from tests.support.images import push_blob, push_image
from tests.support.names import unique
from tests.support.process import crash
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.registry import RegistryProcess
from tests.support.waiting import eventually

ACCEPT = {
    "Accept": "application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
}


def cached_sizes(proxy: RunningProxy) -> dict[str, int]:
    return {
        f"sha256:{p.name}": p.stat().st_size
        for p in (proxy.config.cache_dir / "blobs" / "sha256").glob("*/*")
    }


async def cli(*args: str, timeout: float = 120) -> str:  # noqa: ASYNC109
    result = await run_process(sys.executable, "-m", "cacheproxy", *args, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


async def test_eviction_keeps_the_cache_under_its_limit_while_pulls_run(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("evict")
    blobs = {}
    for i in range(8):
        # The first is big enough that serving it outlasts the socket buffers.
        size = 24_000_000 if i == 0 else 4_000_000
        data = hashlib.sha256(f"evict{i}".encode()).digest() * (size // 32)
        blobs[await push_blob(forwarder.url, name, data)] = data
    async with (
        running_proxy(
            forwarder.url, tmp_path / "cache", max_size="40MB", evict_interval=0.1, min_free="1MB"
        ) as proxy,
        aiohttp.ClientSession() as http,
    ):
        housekeeper = proxy.app[KEEPER]
        # A slow reader holds one blob open while the others push the cache over.
        held = next(iter(blobs))
        async with http.get(f"{proxy.url}/v2/{name}/blobs/{held}") as slow:
            first = await slow.content.readexactly(1000)

            async def get(digest: str) -> bytes:
                async with http.get(f"{proxy.url}/v2/{name}/blobs/{digest}") as resp:
                    return await resp.read()

            for digest in list(blobs)[1:]:
                assert await get(digest) == blobs[digest]
            await housekeeper.evict_once()
            assert proxy.blob_path(held).exists(), "a blob being served is never evicted"
            rest = await slow.read()
        assert first + rest == blobs[held]
        # Once nobody reads it, the big blob goes as soon as it is the least recently
        # used and room is needed.
        for digest in list(blobs)[1:]:
            assert await get(digest) == blobs[digest]
        await housekeeper.evict_once()
        sizes = cached_sizes(proxy)
        assert sum(sizes.values()) <= 40_000_000
        assert held not in sizes
        assert housekeeper.evicted_blobs >= 5
        # Everything that is still cached is whole and right.
        for digest in sizes:
            assert hashlib.sha256(proxy.blob_path(digest).read_bytes()).hexdigest() == digest[7:]
        # An evicted blob is simply fetched again.
        gone = next(d for d in blobs if d not in sizes)
        async with http.get(f"{proxy.url}/v2/{name}/blobs/{gone}") as resp:
            assert await resp.read() == blobs[gone]


async def test_when_other_files_fill_the_disk_the_cache_gives_space_back(
    forwarder: Forwarder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk of 200 MB the test fills with "other files" (images, logs): free space is
    # what neither they nor the cache's blobs take. min_free is 20% (40 MB); the cache
    # has no size limit, so only min_free bounds it.
    total, others = 200_000_000, [100_000_000]
    cache = tmp_path / "cache"

    def disk_space(store: BlobStore) -> DiskSpace:
        held = sum(p.stat().st_size for p in (cache / "blobs").rglob("*") if p.is_file())
        return DiskSpace(total - others[0] - held, total)

    monkeypatch.setattr(BlobStore, "disk_space", disk_space)
    name = unique("free")
    blobs = {}
    for i in range(5):
        data = hashlib.sha256(f"free{i}".encode()).digest() * (4_000_000 // 32)
        blobs[await push_blob(forwarder.url, name, data)] = data
    order = list(blobs)
    async with (
        running_proxy(forwarder.url, cache, min_free="20%", evict_interval=3600) as proxy,
        aiohttp.ClientSession() as http,
    ):

        async def get(digest: str) -> bytes:
            async with http.get(f"{proxy.url}/v2/{name}/blobs/{digest}") as resp:
                return await resp.read()

        for digest in order:  # the first is the least recently used
            assert await get(digest) == blobs[digest]
        assert set(cached_sizes(proxy)) == set(order)
        assert await proxy.keeper.evict_once() == {}, "80 MB free: above min_free"
        # Other files take 50 MB more: 30 MB free, 10 MB short of min_free. The
        # cache frees that and 1% of the disk more (12 MB: three blobs), oldest first.
        # Two runs at once (the keeper's own loop, woken by the last fill, may be one):
        # one shortfall frees three blobs, not six.
        others[0] += 50_000_000
        await asyncio.gather(proxy.keeper.evict_once(), proxy.keeper.evict_once())
        assert set(cached_sizes(proxy)) == set(order[3:])
        assert proxy.keeper.evicted_blobs == 3
        assert disk_space(proxy.fills.store).free >= 40_000_000
        # Below min_free a miss is served, uncached; above it the cache fills again.
        others[0] += 10_000_000
        assert await get(order[0]) == blobs[order[0]]
        assert order[0] not in cached_sizes(proxy)
        others[0] -= 20_000_000
        assert await get(order[0]) == blobs[order[0]]
        assert order[0] in cached_sizes(proxy)


async def test_gc_dry_run_equals_gc_and_ls_lists_the_cache(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("gc")
    images = {}
    for i, tag in enumerate(["t1", "t2", "t3", "t4"]):
        images[tag] = await push_image(forwarder.url, name, tag, layer_sizes=(5000,), seed=i)
    cache = tmp_path / "cache"
    async with running_proxy(forwarder.url, cache) as proxy, aiohttp.ClientSession() as http:
        for tag in ["t1", "t2", "t3", "t4"]:  # t4 is pulled last: the most recent
            ref = f"docker://{proxy.host}/{name}:{tag}"
            (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / tag}")).check()
        async with http.get(f"{proxy.url}/v2/{name}/manifests/t4", headers=ACCEPT) as resp:
            assert resp.status == 200
    config = tmp_path / "c.toml"
    config.write_text(
        f'cache_dir = "{cache}"\n[lifecycle]\nmax_tags_per_repo = 2\nkeep = ["*:t1"]\n'
    )
    listing = json.loads(await cli("ls", "--config", str(config), "--json"))
    assert {r["tag"] for r in listing} == {"t1", "t2", "t3", "t4"}
    assert all(r["complete"] and r["size"] > 5000 for r in listing)
    assert next(r for r in listing if r["tag"] == "t4")["pulls"] == 2

    dry = await cli("gc", "--config", str(config), "--dry-run")
    doomed = images["t2"]
    assert f"/{name}:t2 " in dry and f"/{name}:t3 " not in dry and f"/{name}:t1 " not in dry
    for blob in doomed.all_blobs():
        assert blob.digest in dry
    before = {p.name for p in (cache / "blobs/sha256").glob("*/*")}
    real = await cli("gc", "--config", str(config))
    assert real.splitlines()[1:] == dry.splitlines()[1:]
    after = {p.name for p in (cache / "blobs/sha256").glob("*/*")}
    removed = before - after
    assert removed == {b.digest[7:] for b in doomed.all_blobs()} | {doomed.digest[7:]}
    listing = json.loads(await cli("ls", "--config", str(config), "--json"))
    assert {r["tag"] for r in listing} == {"t1", "t3", "t4"}


async def test_offline_start_and_offline_mode(
    fresh_registry: RegistryProcess, tmp_path: Path
) -> None:
    name = unique("offline")
    image = await push_image(fresh_registry.url, name, "v1", layer_sizes=(20_000,))
    cache = tmp_path / "cache"
    async with running_proxy(fresh_registry.url, cache) as proxy:
        ref = f"docker://{proxy.host}/{name}:v1"
        (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'a'}")).check()
    fresh_registry.stop()
    # Starts and serves while the upstream is unreachable (tags stale-if-error).
    async with running_proxy(fresh_registry.url, cache, tag_ttl=0) as proxy:
        ref = f"docker://{proxy.host}/{name}:v1"
        (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'b'}")).check()
        assert (tmp_path / "b/manifest.json").read_bytes() == image.manifest
    # --offline never dials out: a forwarder in front of the (dead) upstream sees nothing.
    async with (
        Forwarder(fresh_registry.url) as fwd,
        running_proxy(fresh_registry.url, cache, offline=True) as proxy,
        aiohttp.ClientSession() as http,
    ):
        ref = f"docker://{proxy.host}/{name}:v1"
        (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'c'}")).check()
        async with http.get(f"{proxy.url}/v2/{name}/manifests/nope", headers=ACCEPT) as resp:
            assert resp.status == 404
            assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        missing = "sha256:" + "1" * 64
        async with http.get(f"{proxy.url}/v2/{name}/blobs/{missing}") as resp:
            assert resp.status == 404
        assert fwd.requests == []


async def test_prefetch_export_import_then_offline_pull(
    fresh_registry: RegistryProcess, tmp_path: Path
) -> None:
    name = unique("airgap")
    image = await push_image(fresh_registry.url, name, "v1", layer_sizes=(300_000, 100_000))
    host = fresh_registry.host
    ref = f"{host}/{name}:v1"
    first = tmp_path / "first"
    images = tmp_path / "images.txt"
    images.write_text(f"# images for the air gap\n{ref}\n")
    out = await cli(
        "prefetch", "--upstream", fresh_registry.url, "--cache-dir", str(first), "-f", str(images)
    )
    assert "blobs cached" in out or out == ""
    bundle = tmp_path / "bundle.tar"
    await cli(
        "export",
        "--upstream",
        fresh_registry.url,
        "--cache-dir",
        str(first),
        "-f",
        str(images),
        "-o",
        str(bundle),
    )
    fresh_registry.stop()
    # The bundle is a standard OCI layout: skopeo reads it by its reference name.
    (await skopeo("copy", f"oci-archive:{bundle}:{ref}", f"dir:{tmp_path / 'x'}")).check()
    assert (tmp_path / "x/manifest.json").read_bytes() == image.manifest

    second = tmp_path / "second"
    await cli("import", "--upstream", fresh_registry.url, "--cache-dir", str(second), str(bundle))
    async with running_proxy(fresh_registry.url, second, offline=True) as proxy:
        pulled = tmp_path / "pulled"
        src = f"docker://{proxy.host}/{name}:v1"
        (await skopeo("copy", "--src-tls-verify=false", src, f"dir:{pulled}")).check()
    assert (pulled / "manifest.json").read_bytes() == image.manifest
    for blob in image.all_blobs():
        assert (pulled / blob.digest[7:]).read_bytes() == image.blob_data[blob.digest]


async def test_kill_9_during_import_leaves_a_verified_cache(
    fresh_registry: RegistryProcess, tmp_path: Path
) -> None:
    name = unique("crashimport")
    image = await push_image(
        fresh_registry.url, name, "v1", layer_sizes=(8_000_000, 8_000_000, 8_000_000)
    )
    ref = f"{fresh_registry.host}/{name}:v1"
    first = tmp_path / "first"
    await cli("prefetch", "--upstream", fresh_registry.url, "--cache-dir", str(first), ref)
    bundle = tmp_path / "bundle.tar"
    await cli(
        "export",
        "--upstream",
        fresh_registry.url,
        "--cache-dir",
        str(first),
        ref,
        "-o",
        str(bundle),
    )
    second = tmp_path / "second"
    args = ["import", "--upstream", fresh_registry.url, "--cache-dir", str(second), str(bundle)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cacheproxy",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await eventually(
        lambda: list((second / "tmp").glob("*")) or proc.returncode is not None,
        timeout=30,
        interval=0.005,  # to crash it mid-import, while a file is being written
        what="the import writing a file",
    )
    await crash(proc)
    # What is in place is verified; leftovers go at the next start; no tag yet.
    verified = await cli("verify", "--upstream", fresh_registry.url, "--cache-dir", str(second))
    assert "removed 0" in verified
    assert list((second / "tmp").glob("*")) == []
    listing = json.loads(
        await cli("ls", "--upstream", fresh_registry.url, "--cache-dir", str(second), "--json")
    )
    assert listing == []
    await cli(*args)
    listing = json.loads(
        await cli("ls", "--upstream", fresh_registry.url, "--cache-dir", str(second), "--json")
    )
    assert [r["digest"] for r in listing] == [image.digest]
    assert "removed 0" in await cli(
        "verify", "--upstream", fresh_registry.url, "--cache-dir", str(second)
    )
