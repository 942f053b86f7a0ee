"""Peer-to-peer cluster mode: each blob leaves the upstream once per cluster."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from cacheproxy.peers.ring import ranked
from cacheproxy.peers.signing import HEADER, sign
from tests.support.cluster import SECRET, start_cluster
from tests.support.forwarder import Forwarder
from tests.support.images import push_blob, push_image, sha256_digest
from tests.support.names import unique
from tests.support.ports import free_port
from tests.support.process import crash, serve_process
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.waiting import eventually

ACCEPT = {
    "Accept": "application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
}


def has_bytes(directory: Path) -> bool:
    """Some file in ``directory`` holds bytes (files may go while it looks)."""
    for path in directory.glob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size:
                return True
    return False


async def pull(http: aiohttp.ClientSession, node: RunningProxy, name: str) -> dict[str, bytes]:
    """Pull name:v1 through ``node`` like a client: manifest, then every blob."""
    async with http.get(f"{node.url}/v2/{name}/manifests/v1", headers=ACCEPT) as resp:
        assert resp.status == 200
        manifest = await resp.json(content_type=None)
    got = {}
    for desc in [manifest["config"], *manifest["layers"]]:
        async with http.get(f"{node.url}/v2/{name}/blobs/{desc['digest']}") as resp:
            assert resp.status == 200
            got[desc["digest"]] = await resp.read()
    return got


async def test_four_nodes_times_eight_clients_fetch_each_blob_once(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    name = unique("cluster")
    image = await push_image(
        forwarder.url, name, "v1", layer_sizes=(600_000, 900_000, 300_000, 1_200_000)
    )
    forwarder.throttle_bps = 3_000_000
    async with AsyncExitStack() as stack:
        nodes = await start_cluster(stack, forwarder.url, tmp_path, secret_file, 4)
        async with aiohttp.ClientSession() as http:
            results = await asyncio.gather(
                *(pull(http, node, name) for node in nodes for _ in range(8))
            )
        for got in results:
            assert got == {d.digest: image.blob_data[d.digest] for d in image.blobs}
        for blob in image.blobs:
            assert forwarder.count("GET", f"/blobs/{blob.digest}") == 1, blob.digest
        # The tag was resolved once for the whole cluster, by its owner.
        assert forwarder.count("GET", f"/v2/{name}/manifests/v1") == 1
        assert forwarder.count("HEAD", f"/v2/{name}/manifests/") == 0
        assert sum(n.fills.stats.peer_gets for n in nodes) >= 3 * len(image.blobs)
        # Every node now holds every blob, verified.
        for node in nodes:
            for blob in image.blobs:
                assert node.blob_path(blob.digest).read_bytes() == image.blob_data[blob.digest]


async def test_peer_path_requires_the_secret(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    name = unique("cluster")
    digest = await push_blob(forwarder.url, name, b"peer bytes" * 100)
    async with AsyncExitStack() as stack:
        (node,) = await start_cluster(stack, forwarder.url, tmp_path, secret_file, 1)
        path = f"/_cacheproxy/peer/blobs/{digest}"
        query = urlencode(sorted({"repo": name, "upstream": forwarder.host}.items()))
        url = f"{node.url}{path}?{query}"
        canonical = f"{path}?{query}"
        async with aiohttp.ClientSession() as http:
            for headers in [
                {},
                {HEADER: "1.abc"},
                {HEADER: sign(b"not-the-cluster-secret-xxxxxxx", "GET", canonical, node.url)},
                {HEADER: sign(SECRET, "GET", canonical, node.url, now=1_000_000)},  # long ago
                # Signed for another node of the cluster: not replayable here.
                {HEADER: sign(SECRET, "GET", canonical, "http://127.0.0.9:5000")},
            ]:
                async with http.get(url, headers=headers) as resp:
                    assert resp.status == 401
                    assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
            assert forwarder.count("GET", f"/blobs/{digest}") == 0
            signed = {HEADER: sign(SECRET, "GET", canonical, node.url)}
            async with http.get(url, headers=signed) as resp:
                assert resp.status == 200
                assert await resp.read() == b"peer bytes" * 100


async def test_peer_with_wrong_bytes_is_never_trusted(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    """A peer that serves corrupt bytes: nothing wrong is cached or served whole;
    the node marks it bad and the client's retry is served from the upstream."""
    fake_port = free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    node_port = free_port()
    node_url = f"http://127.0.0.1:{node_port}"
    name = unique("cluster")
    # A blob that the fake peer owns (rendezvous ranks it above the node).
    for i in range(64):
        data = hashlib.sha256(f"evil{i}".encode()).digest() * 40_000
        if ranked(sha256_digest(data), [fake_url, node_url])[0] == fake_url:
            break
    digest = await push_blob(forwarder.url, name, data)
    served_by_fake = 0

    async def evil(request: web.Request) -> web.StreamResponse:
        nonlocal served_by_fake
        # Whatever it is asked (a holder list too), it answers with the corrupt blob.
        served_by_fake += "/blobs/" in request.path
        corrupt = bytearray(data)
        corrupt[len(data) // 2] ^= 0xFF
        return web.Response(body=bytes(corrupt), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", evil)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", fake_port).start()
    try:
        async with (
            running_proxy(
                forwarder.url,
                tmp_path / "node",
                port=node_port,
                peers=(fake_url,),
                self_url=node_url,
                peer_secret_file=secret_file,
            ) as node,
            aiohttp.ClientSession() as http,
        ):
            url = f"{node.url}/v2/{name}/blobs/{digest}"
            with pytest.raises(aiohttp.ClientPayloadError):
                async with http.get(url) as resp:
                    await resp.read()
            assert served_by_fake == 1
            assert not node.blob_path(digest).exists()
            cluster = node.cluster
            assert cluster is not None
            assert cluster.membership.health()[fake_url] == "avoided"
            async with http.get(url) as resp:  # the client's retry
                assert resp.status == 200
                assert await resp.read() == data
            assert served_by_fake == 1
            assert node.blob_path(digest).read_bytes() == data
            assert forwarder.count("GET", f"/blobs/{digest}") == 1
    finally:
        await runner.cleanup()


async def test_owner_killed_mid_stream_pulls_still_complete(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    name = unique("cluster")
    data = hashlib.sha256(b"big").digest() * (8 * 1024 * 1024 // 32)
    digest = await push_blob(forwarder.url, name, data)
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    owner = ranked(digest, urls)[0]
    forwarder.throttle_bps = 4 * 1024 * 1024
    async with AsyncExitStack() as stack:
        procs = {}
        for i, (port, url) in enumerate(zip(ports, urls, strict=True)):
            args = ["--upstream", forwarder.url, "--cache-dir", str(tmp_path / f"n{i}")]
            args += ["--self", url, "--peer-secret-file", str(secret_file)]
            for peer in urls:
                args += ["--peer", peer]
            procs[url] = await stack.enter_async_context(
                serve_process(*args, port=port, log=tmp_path / f"n{i}.log")
            )
        others = [u for u in urls if u != owner]
        async with aiohttp.ClientSession() as http:

            async def fetch(node: str) -> bytes:
                async with http.get(f"{node}/v2/{name}/blobs/{digest}") as resp:
                    assert resp.status == 200
                    return await resp.read()

            pulls = [asyncio.create_task(fetch(node)) for node in others for _ in range(2)]
            # Until the owner is streaming to the other nodes: their fills have bytes.
            filling = [tmp_path / f"n{i}" / "tmp" for i, url in enumerate(urls) if url != owner]
            await eventually(
                lambda: all(has_bytes(tmp) for tmp in filling),
                timeout=20,
                what="the other nodes' fills having bytes",
            )
            owner_proc, _ = procs[owner]
            await crash(owner_proc)
            async with asyncio.timeout(60):
                bodies = await asyncio.gather(*pulls)
        assert all(body == data for body in bodies)
        for i, url in enumerate(urls):
            if url != owner:
                stored = tmp_path / f"n{i}/blobs/sha256" / digest[7:9] / digest[7:]
                assert stored.read_bytes() == data


async def test_membership_change_while_pulls_run(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    name = unique("cluster")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(800_000, 800_000, 400_000))
    forwarder.throttle_bps = 2_000_000
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    members = tmp_path / "members"
    members.write_text("\n".join(urls[:2]) + "\n")
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                running_proxy(
                    forwarder.url,
                    tmp_path / f"node{i}",
                    port=port,
                    peers_file=members,
                    self_url=urls[i],
                    peer_secret_file=secret_file,
                )
            )
            for i, port in enumerate(ports)
        ]
        async with aiohttp.ClientSession() as http:
            pulls = [
                asyncio.create_task(pull(http, node, name)) for node in nodes for _ in range(3)
            ]
            await eventually(
                lambda: any(node.fills.stats.upstream_bytes for node in nodes),
                timeout=20,
                what="the blobs on their way",
            )
            # Node 0 leaves, node 2 joins, mid-pull.
            members.write_text("\n".join(urls[1:]) + "\n")
            os.utime(members, (1, 1))
            for node in nodes:
                assert node.cluster is not None
                await node.cluster.membership.refresh()
            async with asyncio.timeout(60):
                results = await asyncio.gather(*pulls)
        for got in results:
            assert got == {d.digest: image.blob_data[d.digest] for d in image.blobs}
        assert nodes[1].cluster is not None
        assert urls[0] not in nodes[1].cluster.membership.members()
        assert urls[2] in nodes[1].cluster.membership.members()
