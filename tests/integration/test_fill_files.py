"""What a fill puts on disk before it knows the blob, and how much it takes at most."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.forwarder import Fault, Forwarder
from tests.support.images import push_blob, random_bytes
from tests.support.proxy import running_proxy
from tests.support.registry import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)
GET = frozenset({"GET"})


async def test_no_temp_file_before_the_upstream_answers(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Requests for digests nobody has cost no file while the upstream thinks."""
    seen = 0
    release = asyncio.Event()

    async def slow_404(request: web.Request) -> web.Response:
        nonlocal seen
        if request.path == "/v2/":
            return web.json_response({})
        seen += 1
        await release.wait()
        return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow_404)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    digests = ["sha256:" + hashlib.sha256(f"{i}".encode()).hexdigest() for i in range(20)]
    try:
        async with running_proxy(f"http://127.0.0.1:{port}", tmp_path / "cache") as proxy:

            async def get(digest: str) -> int:
                async with http.get(f"{proxy.url}/v2/lib/x/blobs/{digest}") as resp:
                    return resp.status

            clients = [asyncio.create_task(get(d)) for d in digests]
            await eventually(lambda: seen >= len(digests), timeout=10, what="every miss upstream")
            assert proxy.fills.active == len(digests)
            assert proxy.temp_files() == []
            release.set()
            assert await asyncio.gather(*clients) == [404] * len(digests)
            assert proxy.temp_files() == []
    finally:
        release.set()
        await runner.cleanup()


async def test_blob_announced_over_max_blob_size_is_refused_without_a_file(
    forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name = f"limits/{uuid.uuid4().hex[:10]}"
    data = random_bytes(1_500_000, name)
    digest = await push_blob(forwarder.url, name, data)
    forwarder.throttle_bps = 1_000_000
    async with running_proxy(forwarder.url, tmp_path / "cache", max_blob_size="1MB") as proxy:
        async with http.get(f"{proxy.url}/v2/{name}/blobs/{digest}") as resp:
            assert resp.status == 502
            assert b"max_blob_size" in await resp.read()
        assert proxy.temp_files() == []
        assert not proxy.blob_path(digest).exists()
    # The answer was dropped after its headers, not read to its end.
    assert forwarder.body_bytes("GET", f"/blobs/{digest}") < len(data) // 2


async def test_unannounced_body_past_max_blob_size_is_cut_and_discarded(
    forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name = f"limits/{uuid.uuid4().hex[:10]}"
    data = random_bytes(3_000_000, name)
    digest = await push_blob(forwarder.url, name, data)
    # No Content-Length and no range: nothing announces the size.
    forwarder.set_fault(Fault(match=digest, kind="length", offset=-1, methods=GET))
    forwarder.throttle_bps = 8_000_000
    settings = {"max_blob_size": "1MB", "upstream_segments": 1}
    async with running_proxy(forwarder.url, tmp_path / "cache", **settings) as proxy:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(f"{proxy.url}/v2/{name}/blobs/{digest}") as resp:
                assert resp.status == 200
                await resp.read()
        await proxy.idle(timeout=10)
        assert proxy.temp_files() == []
        assert not proxy.blob_path(digest).exists()
        assert proxy.fills.stats.upstream_bytes < 2_000_000
