"""Bandwidth limits against the real registry, by what the buckets say on /metrics
(the kernel's view of the rates is the network bed's: test_netbed.py): a client's
pull under ``upstream_rate`` goes through its bucket; ``prefetch_rate`` holds a
preheat but never a client, not even one that joins the preheat's download."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import aiohttp

from tests.support.forwarder import Forwarder
from tests.support.images import push_image
from tests.support.proxy import config_with, running_proxy
from tests.support.registry import RegistryProcess
from tests.support.waiting import eventually


async def metric(http: aiohttp.ClientSession, url: str, name: str, kind: str) -> float | None:
    async with http.get(f"{url}/metrics") as resp:
        page = await resp.text()
    found = re.search(rf'^{name}\{{kind="{kind}"\}} (\S+)$', page, re.M)
    return float(found.group(1)) if found else None


async def test_a_pull_under_upstream_rate_goes_through_its_bucket(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    image = await push_image(
        registry.url, f"rates/up-{uuid.uuid4().hex[:6]}", "v1", layer_sizes=(3_000_000,)
    )
    layer = image.blobs[1]
    async with (
        running_proxy(registry.url, tmp_path / "cache", upstream_rate="4MB") as proxy,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{proxy.url}/v2/{image.name}/blobs/{layer.digest}") as resp:
            assert resp.status == 200
            assert await resp.read() == image.blob_data[layer.digest]
        limit = "cacheproxy_rate_limit_bytes_per_second"
        assert await metric(http, proxy.url, limit, "upstream") == 4_000_000
        assert await metric(http, proxy.url, limit, "prefetch") is None
        through = await metric(http, proxy.url, "cacheproxy_rate_limited_bytes_total", "upstream")
        assert through is not None and through >= layer.size
        # 3 MB at 4 MB/s, past a tenth of a second's burst: the reads waited.
        wait = "cacheproxy_rate_limit_wait_seconds_total"
        waited = await metric(http, proxy.url, wait, "upstream")
        assert waited is not None and waited > 0


async def test_prefetch_rate_holds_a_preheat_until_a_client_reads_the_same_blob(
    forwarder: Forwarder, registry: RegistryProcess, tmp_path: Path
) -> None:
    """At 100 kB/s a 4 MB layer would take 40 s to preheat; a client asking for it
    meanwhile lifts the limit, so the bucket sees only part of it; and a client's own
    pull never goes through the prefetch bucket at all."""
    name = f"rates/pre-{uuid.uuid4().hex[:6]}"
    image = await push_image(registry.url, name, "v1", layer_sizes=(4_000_000,), seed="held")
    other = await push_image(registry.url, name, "v2", layer_sizes=(1_000_000,), seed="client")
    layer = image.blobs[1]
    config = config_with(tmp_path, forwarder.url)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config, prefetch_rate="100kB") as p,
        aiohttp.ClientSession() as http,
    ):
        through = "cacheproxy_rate_limited_bytes_total"
        # A client's pull: not the prefetch bucket's.
        for blob in other.blobs:
            async with http.get(f"{p.url}/v2/reg.test/{name}/blobs/{blob.digest}") as resp:
                assert resp.status == 200 and await resp.read() == other.blob_data[blob.digest]
        assert await metric(http, p.url, through, "prefetch") == 0
        preheat = asyncio.create_task(
            http.post(f"{p.url}/_cacheproxy/preheat", json={"images": [f"reg.test/{name}:v1"]})
        )
        try:
            await eventually(
                lambda: forwarder.count("GET", f"/blobs/{layer.digest}"),
                what="the preheat's download of the layer under way",
            )
            async with http.get(f"{p.url}/v2/reg.test/{name}/blobs/{layer.digest}") as resp:
                assert resp.status == 200 and await resp.read() == image.blob_data[layer.digest]
            answer = await asyncio.wait_for(preheat, timeout=60)
            lines = (await answer.read()).decode()
            assert '"done": true, "failed": 0' in lines, lines
        finally:
            preheat.cancel()
        held = await metric(http, p.url, through, "prefetch")
        assert held is not None and 0 < held < layer.size
        assert forwarder.count("GET", f"/blobs/{layer.digest}") == 1
