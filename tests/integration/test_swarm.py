"""Cluster mode with holders: a blob's pieces come from every node that has them."""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.http.keys import HOLDINGS
from cacheproxy.peers.ring import ranked
from tests.integration.test_peers import SECRET, start_cluster
from tests.support.forwarder import Forwarder
from tests.support.images import push_blob, random_bytes
from tests.support.names import unique


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "peer-secret"
    path.write_bytes(SECRET + b"\n")
    return path


async def test_scratch(forwarder: Forwarder, tmp_path: Path, secret_file: Path) -> None:
    name = unique("swarm")
    data = random_bytes(24 * 1024 * 1024, "swarm")
    digest = await push_blob(forwarder.url, name, data)
    forwarder.throttle_bps = 20_000_000
    async with AsyncExitStack() as stack:
        nodes = await start_cluster(stack, forwarder.url, tmp_path, secret_file, 4)
        for node in nodes:
            node.app[HOLDINGS].uploads.slots = 1
        async with aiohttp.ClientSession() as http:
            async def fetch(node):
                async with http.get(f"{node.url}/v2/{name}/blobs/{digest}") as resp:
                    assert resp.status == 200
                    return await resp.read()
            bodies = await asyncio.gather(*(fetch(n) for n in nodes))
        assert all(b == data for b in bodies)
        print("upstream GETs", forwarder.count("GET", f"/blobs/{digest}"), forwarder.body_bytes("GET", f"/blobs/{digest}") / len(data))
        for node in nodes:
            h = node.app[HOLDINGS]
            print(node.url, "admitted", h.uploads.admitted, "refused", h.uploads.refused, vars(node.cluster.stats), node.fills.stats.peer_bytes)
