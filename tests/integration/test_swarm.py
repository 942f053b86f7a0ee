"""Cluster mode with holders: a blob's pieces come from every node that has them.

Real nodes in the test's loop, the real registry behind a forwarder. What the swarm
promises, each test one: pieces come from several holders while every blob leaves
the upstream once; a holder serves only what it holds, signed, under the links rule,
and answers "busy" past its upload bound; the owner's holder list is signed; a
holder that sends wrong bytes costs a refetch from the owner, never a wrong blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from cacheproxy.blobs.segments import Span
from cacheproxy.http.keys import CLUSTER, HOLDINGS
from cacheproxy.peers.ring import ranked
from cacheproxy.peers.signing import ANSWER_HEADER, HEADER, sign, verify_answer
from cacheproxy.swarm.lists import list_key
from tests.support.clients import skopeo
from tests.support.cluster import SECRET, start_cluster
from tests.support.forwarder import Forwarder
from tests.support.images import push_blob, push_image, random_bytes, sha256_digest
from tests.support.names import unique
from tests.support.ports import free_port
from tests.support.proxy import RunningProxy, running_proxy

MIB = 1 << 20


def signed_url(target: str, kind: str, digest: str, /, **query: str) -> tuple[str, dict[str, str]]:
    """A peer request to the node ``target``, signed for it with the cluster secret."""
    path = f"/_cacheproxy/peer/{kind}/{digest}"
    canonical = f"{path}?{urlencode(sorted(query.items()))}"
    return f"{target}{canonical}", {HEADER: sign(SECRET, "GET", canonical, target)}


async def get_blob(
    http: aiohttp.ClientSession, node: RunningProxy, name: str, digest: str
) -> bytes:
    async with http.get(f"{node.url}/v2/{name}/blobs/{digest}") as resp:
        assert resp.status == 200
        return await resp.read()


async def test_pieces_come_from_several_holders_and_the_blob_from_the_upstream_once(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    name = unique("swarm")
    data = random_bytes(24 * MIB, "swarm")
    digest = await push_blob(forwarder.url, name, data)
    forwarder.throttle_bps = 20_000_000
    async with AsyncExitStack() as stack:
        nodes = await start_cluster(stack, forwarder.url, tmp_path, secret_file, 4)
        # One upload at a time per node: the owner alone cannot serve everyone.
        for node in nodes:
            node.app[HOLDINGS].uploads.slots = 1
        async with aiohttp.ClientSession() as http:
            bodies = await asyncio.gather(*(get_blob(http, n, name, digest) for n in nodes))
        assert all(body == data for body in bodies)
        assert forwarder.body_bytes("GET", f"/blobs/{digest}") == len(data)
        owner = ranked(digest, [n.url for n in nodes])[0]
        uploads = {n.url: n.app[HOLDINGS].uploads for n in nodes}
        # Nodes other than the owner sent pieces too, and the bound refused some asks.
        assert sum(1 for url, up in uploads.items() if url != owner and up.admitted) >= 1
        assert sum(up.refused for up in uploads.values()) >= 1
        for node in nodes:
            assert node.blob_path(digest).read_bytes() == data
            assert node.temp_files() == []
        async with aiohttp.ClientSession() as http, http.get(f"{nodes[0].url}/metrics") as resp:
            metrics = await resp.text()
        assert 'cacheproxy_peer_swarm_total{what="holder_lists"}' in metrics


async def test_skopeo_pulls_an_image_from_every_node_of_a_swarm_at_once(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    """Real clients on every node at once: each gets the image whole, verified by its
    own digest checks, and each blob leaves the upstream once for the cluster."""
    image = await push_image(forwarder.url, unique("swarm/img"), "v1", layer_sizes=(12 * MIB,))
    forwarder.throttle_bps = 20_000_000
    async with AsyncExitStack() as stack:
        nodes = await start_cluster(stack, forwarder.url, tmp_path, secret_file, 3)
        outs = [tmp_path / f"out{i}" for i in range(len(nodes))]
        results = await asyncio.gather(
            *(
                skopeo(
                    "copy",
                    "--src-tls-verify=false",
                    f"docker://{n.host}/{image.name}:v1",
                    f"dir:{out}",
                )
                for n, out in zip(nodes, outs, strict=True)
            )
        )
        for result in results:
            result.check()
        lists = sum(n.app[CLUSTER].stats.holder_lists for n in nodes)
    for out in outs:
        for blob in image.blobs:
            assert sha256_digest((out / blob.digest.split(":")[1]).read_bytes()) == blob.digest
    for blob in image.blobs:
        assert forwarder.body_bytes("GET", f"/blobs/{blob.digest}") == blob.size
    # The nodes other than each blob's owner took it through the swarm.
    assert lists >= 1


async def test_a_holder_serves_only_what_it_holds_signed_and_bounded(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    name = unique("swarm")
    data = random_bytes(3 * MIB, "pieces")
    digest = await push_blob(forwarder.url, name, data)
    async with AsyncExitStack() as stack:
        (node,) = await start_cluster(stack, forwarder.url, tmp_path, secret_file, 1)
        query = {"upstream": forwarder.host, "repo": name}
        url, signed = signed_url(node.url, "pieces", digest, **query)
        async with aiohttp.ClientSession() as http:
            # Not held: refused at once, and no fetch starts for it.
            async with http.get(url, headers={**signed, "Range": "bytes=0-99"}) as resp:
                assert resp.status == 404
                assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
            assert forwarder.count("GET", f"/blobs/{digest}") == 0
            async with http.get(url, headers={"Range": "bytes=0-99"}) as resp:
                assert resp.status == 401
            assert await get_blob(http, node, name, digest) == data
            async with http.get(url, headers={**signed, "Range": "bytes=100-2097251"}) as resp:
                assert resp.status == 206
                assert await resp.read() == data[100:2097252]
            # At its upload bound: busy, with Retry-After; a small range still goes.
            node.app[HOLDINGS].uploads.slots = 0
            async with http.get(url, headers={**signed, "Range": "bytes=0-2097151"}) as resp:
                assert resp.status == 429 and resp.headers["Retry-After"].isdigit()
            async with http.get(url, headers={**signed, "Range": "bytes=0-1000"}) as resp:
                assert resp.status == 206 and await resp.read() == data[:1001]
            # Under a repository the upstream does not vouch for: nothing, as upstream.
            other = unique("elsewhere")
            url, signed = signed_url(
                node.url, "pieces", digest, upstream=forwarder.host, repo=other
            )
            async with http.get(url, headers={**signed, "Range": "bytes=0-99"}) as resp:
                assert resp.status == 404
            assert forwarder.count("HEAD", f"/v2/{other}/blobs/{digest}") == 1


async def test_the_owner_brings_the_blob_in_once_and_signs_its_holder_list(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    name = unique("swarm")
    data = random_bytes(2 * MIB, "holding")
    digest = await push_blob(forwarder.url, name, data)
    async with AsyncExitStack() as stack:
        (owner,) = await start_cluster(stack, forwarder.url, tmp_path, secret_file, 1)
        asker = "http://127.0.0.9:5000"
        query = {"upstream": forwarder.host, "repo": name, "node": asker}
        async with aiohttp.ClientSession() as http:
            for have in ("", "0-1000"):
                url, signed = signed_url(owner.url, "holding", digest, **query, have=have)
                async with http.get(url, headers=signed) as resp:
                    assert resp.status == 200
                    body = await resp.read()
                    fields = [digest, hashlib.sha256(body).hexdigest()]
                    assert verify_answer(
                        SECRET, signed[HEADER], fields, resp.headers.get(ANSWER_HEADER)
                    )
                doc = json.loads(body)
                assert doc["size"] == len(data)
                assert doc["holders"][0]["node"] == owner.url
            # The second list names the asker to no one but others: it is not in its own.
            assert asker not in {h["node"] for h in doc["holders"]}
            listed = owner.app[HOLDINGS].lists.reports(list_key(forwarder.host, digest))
            assert listed[0].have == (Span(0, 1000),)
            url, signed = signed_url(owner.url, "holding", digest, **query)
            async with http.get(url, headers={**signed, HEADER: "1.forged"}) as resp:
                assert resp.status == 401
        await owner.idle()  # the fill the first list started, to its end
        assert forwarder.body_bytes("GET", f"/blobs/{digest}") == len(data)
        assert owner.blob_path(digest).read_bytes() == data


async def test_a_holder_that_sends_wrong_bytes_costs_a_refetch_never_a_wrong_blob(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    """A node with the secret claims the whole blob and sends corrupt pieces: the fill
    fails as any fill does, the holder sits out, and the client's retry gets the
    blob from its owner alone."""
    owner_port, asker_port, fake_port = free_port(), free_port(), free_port()
    owner_url, asker_url, fake_url = (
        f"http://127.0.0.1:{p}" for p in (owner_port, asker_port, fake_port)
    )
    members = (owner_url, asker_url, fake_url)
    name = unique("swarm")
    for i in range(64):  # a blob the real owner owns
        data = random_bytes(10 * MIB, f"wrong{i}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ranked(digest, members)[0] == owner_url:
            break
    await push_blob(forwarder.url, name, data)
    served = 0

    async def corrupt(request: web.Request) -> web.StreamResponse:
        nonlocal served
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last)
        served += 1
        body = bytearray(data[start : end + 1])
        body[0] ^= 0xFF
        headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        return web.Response(status=206, body=bytes(body), headers=headers)

    app = web.Application()
    app.router.add_get("/_cacheproxy/peer/pieces/{tail:.*}", corrupt)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", fake_port).start()
    settings = {"peers": members, "peer_secret_file": secret_file}
    try:
        async with AsyncExitStack() as stack:
            owner = await stack.enter_async_context(
                running_proxy(
                    forwarder.url, tmp_path / "o", port=owner_port, self_url=owner_url, **settings
                )
            )
            asker = await stack.enter_async_context(
                running_proxy(
                    forwarder.url, tmp_path / "a", port=asker_port, self_url=asker_url, **settings
                )
            )
            query = {
                "upstream": forwarder.host,
                "repo": name,
                "node": fake_url,
                "have": f"0-{len(data)}",
                "size": str(len(data)),
            }
            url, signed = signed_url(owner.url, "holding", digest, **query)
            async with aiohttp.ClientSession() as http:
                async with http.get(url, headers=signed) as resp:
                    assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await get_blob(http, asker, name, digest)
                assert served >= 1 and not asker.blob_path(digest).exists()
                assert asker.cluster is not None
                assert asker.cluster.stats.swarm_mismatches == 1
                before = served
                assert await get_blob(http, asker, name, digest) == data  # the retry
            assert served == before
            assert asker.blob_path(digest).read_bytes() == data
            assert owner.blob_path(digest).read_bytes() == data
    finally:
        await runner.cleanup()
