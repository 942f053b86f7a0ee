"""A cluster's preheat (``cacheproxy prefetch --cluster``), four real nodes in front of
the real registry: each blob lands on its owner and the next ``copies`` nodes of its
rank and nowhere else, the upstream sends each blob once, and a pull on any node
afterwards takes nothing from the upstream."""

from __future__ import annotations

import json
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

from cacheproxy.peers.ring import ranked
from tests.support.clients import run_process
from tests.support.forwarder import Forwarder
from tests.support.images import push_image
from tests.support.ports import free_port
from tests.support.process import serve_process
from tests.support.proxy import config_with, running_proxy
from tests.support.registry import RegistryProcess


def on_disk(cache: Path, digest: str) -> bool:
    return (cache / "blobs/sha256" / digest[7:9] / digest[7:]).is_file()


async def test_a_preheat_puts_each_blob_on_its_owner_and_copies_more_nodes(
    forwarder: Forwarder, registry: RegistryProcess, tmp_path: Path, secret_file: Path
) -> None:
    repo = f"app/rollout-{uuid.uuid4().hex[:6]}"
    image = await push_image(registry.url, repo, "v1", layer_sizes=(300_000, 200_000, 5000))
    config = config_with(tmp_path, forwarder.url)
    ports = [free_port() for _ in range(4)]
    members = [f"http://127.0.0.1:{p}" for p in ports]
    caches = [tmp_path / f"n{i}" for i in range(4)]
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        for i, port in enumerate(ports):
            args = ["--config", str(config), "--cache-dir", str(caches[i])]
            args += ["--self", members[i], "--peer-secret-file", str(secret_file)]
            for member in members:
                args += ["--peer", member]
            await stack.enter_async_context(
                serve_process(*args, port=port, log=tmp_path / f"n{i}.log")
            )
        # The command line, against the last node (its lines name every (blob, node)).
        result = await run_process(
            sys.executable,
            "-m",
            "cacheproxy",
            "prefetch",
            "--config",
            str(config),
            "--cluster",
            "--copies",
            "2",
            "--url",
            members[3],
            f"reg.test/{repo}:v1",
        )
        out = result.stdout.decode()
        assert result.returncode == 0, out + result.stderr
        assert f"{len(image.blobs)} blobs" in out
        for blob in image.blobs:
            holders = ranked(blob.digest, members)[:3]
            for member, cache in zip(members, caches, strict=True):
                assert on_disk(cache, blob.digest) == (member in holders), (member, blob, out)
                if member in holders:
                    assert f"{blob.digest} on {member}: kept" in out
            assert forwarder.count("GET", f"/blobs/{blob.digest}") == 1, "the upstream once"
        # Every node now serves the image without the upstream's bytes.
        before = forwarder.count("GET", "/blobs/")
        for member in members:
            for blob in image.blobs:
                async with http.get(f"{member}/v2/reg.test/{repo}/blobs/{blob.digest}") as resp:
                    assert resp.status == 200
                    assert await resp.read() == image.blob_data[blob.digest]
        assert forwarder.count("GET", "/blobs/") == before


async def test_a_preheat_reports_what_it_could_not_bring(
    forwarder: Forwarder, registry: RegistryProcess, tmp_path: Path
) -> None:
    """A single node (no cluster): the image's blobs are brought onto it; an image the
    upstream does not have is a line of its own, the count of failures at the end."""
    repo = f"app/one-{uuid.uuid4().hex[:6]}"
    image = await push_image(registry.url, repo, "v1", layer_sizes=(2000,))
    config = config_with(tmp_path, forwarder.url)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        images = [f"reg.test/{repo}:v1", f"reg.test/{repo}:missing"]
        async with http.post(f"{proxy.url}/_cacheproxy/preheat", json={"images": images}) as r:
            assert r.status == 200
            lines = [json.loads(raw) for raw in (await r.read()).splitlines()]
        assert lines[-1] == {"done": True, "failed": 1}
        assert any(line.get("image") == images[1] and "error" in line for line in lines)
        for blob in image.blobs:
            assert proxy.blob_path(blob.digest).is_file()
        async with http.post(f"{proxy.url}/_cacheproxy/preheat", json={"images": "x"}) as r:
            assert r.status == 400
            assert (await r.json())["errors"][0]["code"] == "UNSUPPORTED"


async def test_the_preheat_endpoint_is_the_operators(
    forwarder: Forwarder, registry: RegistryProcess, tmp_path: Path
) -> None:
    """From an address that is not loopback (the rule's loopback switched off stands in
    for one) a preheat is refused: a tenant may not fill the cluster's disks."""
    config = config_with(tmp_path, forwarder.url, "[metrics]\nloopback = false\n")
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.url}/_cacheproxy/preheat", json={"images": ["reg.test/a:b"]}) as r,
    ):
        assert r.status in (401, 403)
