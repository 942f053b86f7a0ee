"""How fresh a tag must be, by the operator's ``[[freshness]]`` rules, against the real
registry: a tag deleted upstream served stale under a rule that says 404 (and its
blobs with it), refused without one; a pinned tag kept until ``cacheproxy refresh``;
a short ttl revalidated and a long one not; a refresh carried across a cluster."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

from tests.support.clients import run_process
from tests.support.forwarder import Forwarder
from tests.support.images import PushedImage, push_image
from tests.support.ports import free_port
from tests.support.process import serve_process
from tests.support.proxy import config_with, running_proxy
from tests.support.registry import RegistryProcess

ACCEPT = {
    "Accept": "application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
}
SECRET = b"a-cluster-secret-of-enough-bytes!"


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, dict[str, str]]:
    async with http.get(url, headers=ACCEPT) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def delete_manifest(registry: str, image: PushedImage) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{registry}/v2/{image.name}/manifests/{image.digest}"
        async with http.delete(url) as resp:
            assert resp.status == 202, await resp.text()


async def test_a_deleted_tag_is_served_stale_only_under_a_404_rule(
    forwarder: Forwarder, registry: RegistryProcess, tmp_path: Path
) -> None:
    kept_repo, gone_repo = f"keep/app-{uuid.uuid4().hex[:6]}", f"drop/app-{uuid.uuid4().hex[:6]}"
    kept = await push_image(registry.url, kept_repo, "v1", layer_sizes=(3000,))
    gone = await push_image(registry.url, gone_repo, "v1", layer_sizes=(3000,))
    rules = (
        '[[freshness]]\nrepositories = ["reg.test/keep/*"]\nttl = "0.2s"\n'
        'stale_on = ["429", "5xx", "offline", "404"]\n'
        '[[freshness]]\nrepositories = ["*"]\nttl = "0.2s"\n'
    )
    config = config_with(tmp_path, forwarder.url, rules)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config, link_ttl=0.2) as proxy,
        aiohttp.ClientSession() as http,
    ):
        for image in (kept, gone):
            base = f"{proxy.url}/v2/reg.test/{image.name}"
            assert (await get(http, f"{base}/manifests/v1"))[0] == 200
            for blob in image.blobs:
                assert (await get(http, f"{base}/blobs/{blob.digest}"))[0] == 200
            await delete_manifest(registry.url, image)
        await asyncio.sleep(0.3)
        # Under the 404 rule: served stale, said so, and counted; its blobs too, their
        # links past link_ttl and refused by the upstream.
        base = f"{proxy.url}/v2/reg.test/{kept.name}"
        status, body, headers = await get(http, f"{base}/manifests/v1")
        assert (status, body) == (200, kept.manifest)
        assert 'detail="404"' in headers["Cache-Status"]
        assert headers["Warning"].startswith("110 ")
        for blob in kept.blobs:
            assert (await get(http, f"{base}/blobs/{blob.digest}"))[0] == 200
        metrics = (await get(http, f"{proxy.url}/metrics"))[1].decode()
        assert 'cacheproxy_tags_stale_total{reason="404"} 1.0' in metrics
        # Without it: the upstream's own answer.
        status, body, _ = await get(http, f"{proxy.url}/v2/reg.test/{gone.name}/manifests/v1")
        assert status == 404 and json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_a_short_ttl_revalidates_and_a_long_one_does_not(
    forwarder: Forwarder, registry: RegistryProcess, tmp_path: Path
) -> None:
    hot, cold = f"app/hot-{uuid.uuid4().hex[:6]}", f"app/cold-{uuid.uuid4().hex[:6]}"
    for repo in (hot, cold):
        await push_image(registry.url, repo, "latest", layer_sizes=(1000,))
    rules = (
        '[[freshness]]\nrepositories = ["reg.test/app/hot-*"]\ntags = ["latest"]\n'
        'ttl = "0.3s"\n[[freshness]]\nrepositories = ["*"]\nttl = "5m"\n'
    )
    config = config_with(tmp_path, forwarder.url, rules)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        for repo in (hot, cold):
            assert (await get(http, f"{proxy.url}/v2/reg.test/{repo}/manifests/latest"))[0] == 200
        before = {repo: forwarder.count("HEAD", f"/{repo}/manifests/") for repo in (hot, cold)}
        await asyncio.sleep(0.4)
        for repo in (hot, cold):
            assert (await get(http, f"{proxy.url}/v2/reg.test/{repo}/manifests/latest"))[0] == 200
        assert forwarder.count("HEAD", f"/{hot}/manifests/") == before[hot] + 1
        assert forwarder.count("HEAD", f"/{cold}/manifests/") == before[cold]


async def test_a_pinned_tag_keeps_its_digest_until_it_is_refreshed(
    forwarder: Forwarder, registry: RegistryProcess, tmp_path: Path
) -> None:
    repo = f"prod/app-{uuid.uuid4().hex[:6]}"
    first = await push_image(registry.url, repo, "v1", layer_sizes=(1000,), seed="first")
    rules = '[[freshness]]\nrepositories = ["reg.test/prod/*"]\npin = true\nttl = "0s"\n'
    config = config_with(tmp_path, forwarder.url, rules)
    port = free_port()
    args = ["--config", str(config), "--cache-dir", str(tmp_path / "cache")]
    async with (
        serve_process(*args, port=port, log=tmp_path / "serve.log") as (_, url),
        aiohttp.ClientSession() as http,
    ):
        manifest = f"{url}/v2/reg.test/{repo}/manifests/v1"
        assert (await get(http, manifest))[2]["Docker-Content-Digest"] == first.digest
        second = await push_image(registry.url, repo, "v1", layer_sizes=(1000,), seed="second")
        asks = forwarder.count("HEAD", f"/{repo}/manifests/")
        for _ in range(3):
            assert (await get(http, manifest))[2]["Docker-Content-Digest"] == first.digest
        assert forwarder.count("HEAD", f"/{repo}/manifests/") == asks, "never revalidated"
        result = await run_process(
            sys.executable, "-m", "cacheproxy", "refresh", "--config", str(config),
            "--url", url, f"reg.test/{repo}:v1",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert second.digest in result.stdout.decode()
        assert (await get(http, manifest))[2]["Docker-Content-Digest"] == second.digest
        # Pinned again at the new digest.
        await push_image(registry.url, repo, "v1", layer_sizes=(1000,), seed="third")
        assert (await get(http, manifest))[2]["Docker-Content-Digest"] == second.digest


async def test_a_refresh_reaches_every_node_of_a_cluster(
    forwarder: Forwarder, registry: RegistryProcess, tmp_path: Path
) -> None:
    """Two nodes hold a pinned tag; the upstream moves it; a refresh asked of one node
    is made by the tag's owner and forgotten everywhere: both then serve the new one."""
    repo = f"prod/svc-{uuid.uuid4().hex[:6]}"
    first = await push_image(registry.url, repo, "v1", layer_sizes=(1000,), seed="a")
    rules = '[[freshness]]\nrepositories = ["reg.test/prod/*"]\npin = true\n'
    config = config_with(tmp_path, forwarder.url, rules)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    ports = [free_port() for _ in range(2)]
    members = [f"http://127.0.0.1:{p}" for p in ports]
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        urls = []
        for i, port in enumerate(ports):
            args = ["--config", str(config), "--cache-dir", str(tmp_path / f"n{i}")]
            args += ["--self", members[i], "--peer-secret-file", str(secret)]
            for member in members:
                args += ["--peer", member]
            _, url = await stack.enter_async_context(
                serve_process(*args, port=port, log=tmp_path / f"n{i}.log")
            )
            urls.append(url)
        for url in urls:
            got = await get(http, f"{url}/v2/reg.test/{repo}/manifests/v1")
            assert got[2]["Docker-Content-Digest"] == first.digest
        second = await push_image(registry.url, repo, "v1", layer_sizes=(1000,), seed="b")
        heads = forwarder.count("HEAD", f"/{repo}/manifests/") + forwarder.count(
            "GET", f"/{repo}/manifests/v1"
        )
        async with http.post(
            f"{urls[1]}/_cacheproxy/refresh", json={"images": [f"reg.test/{repo}:v1"]}
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["images"][0]["digest"] == second.digest
        for url in urls:
            got = await get(http, f"{url}/v2/reg.test/{repo}/manifests/v1")
            assert got[2]["Docker-Content-Digest"] == second.digest
        asked = forwarder.count("HEAD", f"/{repo}/manifests/") + forwarder.count(
            "GET", f"/{repo}/manifests/v1"
        )
        assert asked - heads == 1, "the cluster asked the upstream once"


async def test_the_refresh_endpoint_is_the_operators(
    forwarder: Forwarder, registry: RegistryProcess, tmp_path: Path
) -> None:
    """Not for a tenant on the network: from an address that is not loopback (the
    metrics rule's loopback switched off here stands in for one), 401/403."""
    repo = f"app/x-{uuid.uuid4().hex[:6]}"
    await push_image(registry.url, repo, "v1", layer_sizes=(1000,))
    config = config_with(tmp_path, forwarder.url, "[metrics]\nloopback = false\n")
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
        http.post(
            f"{proxy.url}/_cacheproxy/refresh", json={"images": [f"reg.test/{repo}:v1"]}
        ) as resp,
    ):
        assert resp.status in (401, 403)
