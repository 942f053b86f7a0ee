"""What /metrics tells, and to whom.

Asked under a repository that may not have it, a digest the cache holds and one it
never saw must move every metric alike: otherwise the counters are the cache oracle
the answers themselves are not (test_who_reads_what). And /metrics is not for
anonymous clients from the network.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.http.keys import METRICS
from tests.integration.test_who_reads_what import (
    PUBLIC,
    SECRET,
    Upstreams,
    answer,
    upstreams,  # noqa: F401 (a fixture)
    write_config,
)
from tests.support.images import basic_auth, push_image
from tests.support.names import unique
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.registry import RegistryProcess, free_port, write_htpasswd
from tests.support.s3 import AWS_ENV, MotoS3, shared_table

Lines = dict[str, float]
PROMETHEUS = ("prometheus", "prometheus-password-1")


def scrape(proxies: list[RunningProxy]) -> Lines:
    """Every sample line of every node, keyed by node and series."""
    lines: Lines = {}
    for i, proxy in enumerate(proxies):
        for line in proxy.app[METRICS].render().decode().splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                lines[f"node{i} {series}"] = float(value)
    return lines


def moved(before: Lines, after: Lines) -> Lines:
    """The series a request moved, and by how much (new series count from zero)."""
    keys = set(before) | set(after)
    changed = [k for k in keys if after.get(k, 0.0) != before.get(k, 0.0)]
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in changed}


async def settled(proxies: list[RunningProxy]) -> None:
    """Wait until the metrics stop moving: a response is counted after its last byte
    went out, so the client may be done with it a moment before."""
    last, still = scrape(proxies), 0
    for _ in range(200):
        await asyncio.sleep(0.02)
        now = scrape(proxies)
        still = still + 1 if now == last else 0
        if still == 5:
            return
        last = now
    raise AssertionError("the metrics kept moving without requests")


@asynccontextmanager
async def nodes(
    mode: str, tmp_path: Path, ups: Upstreams, bucket: MotoS3
) -> AsyncIterator[list[RunningProxy]]:
    """One node alone (its disk full or not), one with a shared bucket, or a cluster
    of two."""
    extra = shared_table(bucket.url, bucket.new_bucket()) if mode == "shared" else ""
    config = write_config(tmp_path, ups, extra).read_text() + (
        f'[[upstream]]\nname = "locked.test"\nurl = "{ups.private.url}"\n'
    )
    config_file = tmp_path / "metrics.toml"
    config_file.write_text(
        config.replace(f'allow = ["{PUBLIC}/*"]', f'allow = ["{PUBLIC}/*", "locked.test/*"]')
    )
    count = 2 if mode == "cluster" else 1
    ports = [free_port() for _ in range(count)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    secret = tmp_path / "peer-secret"
    secret.write_bytes(SECRET)
    async with AsyncExitStack() as stack:
        proxies = []
        for i, (port, url) in enumerate(zip(ports, urls, strict=True)):
            peers = {"peers": tuple(urls), "self_url": url, "peer_secret_file": secret}
            proxy = running_proxy(
                None,
                tmp_path / f"n{i}",
                config_file=config_file,
                port=port,
                **(peers if mode == "cluster" else {}),
            )
            proxies.append(await stack.enter_async_context(proxy))
        yield proxies


@pytest.mark.parametrize("mode", ["alone", "full", "shared", "cluster"])
async def test_held_and_unseen_digests_move_every_metric_alike(
    upstreams: Upstreams,  # noqa: F811
    moto: MotoS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    repo = f"lib/app-{uuid.uuid4().hex[:6]}"
    image = await push_image(upstreams.public.url, repo, "v1", layer_sizes=(4000,))
    never = await push_image(upstreams.public.url, f"{repo}-x", "v1", layer_sizes=(4000,))
    async with nodes(mode, tmp_path, upstreams, moto) as proxies, aiohttp.ClientSession() as http:
        first = proxies[0]
        # The cache comes to hold the image (manifest, config, layer) on every node.
        for proxy in proxies:
            base = f"{proxy.url}/v2/{PUBLIC}/{repo}"
            assert (await answer(http, "GET", f"{base}/manifests/{image.digest}"))[0] == 200
            for blob in image.blobs:
                async with http.get(f"{base}/blobs/{blob.digest}") as resp:
                    assert resp.status == 200
                    await resp.read()
        if mode == "full":
            # The disk counts as full from now on: misses would stream through.
            first.fills.budget.outstanding = 1 << 62
        await settled(proxies)
        held = {"blobs": image.layers[0].digest, "manifests": image.digest}
        unseen = {"blobs": never.layers[0].digest, "manifests": never.digest}
        for where in (f"{PUBLIC}/lib/nothing-{uuid.uuid4().hex[:6]}", "locked.test/team/x"):
            for kind in ("blobs", "manifests"):
                for method in ("GET", "HEAD", "GET"):
                    seen: dict[bool, tuple[tuple[int, str], Lines]] = {}
                    for is_held, digest in ((True, held[kind]), (False, unseen[kind])):
                        before = scrape(proxies)
                        got = await answer(http, method, f"{first.url}/v2/{where}/{kind}/{digest}")
                        seen[is_held] = (got, moved(before, scrape(proxies)))
                    assert seen[True][0][0] in (401, 404), (where, kind, method, seen)
                    assert seen[True] == seen[False], (where, kind, method, seen)


# --- who reads /metrics ---------------------------------------------------------------


async def status_of(http: aiohttp.ClientSession, url: str, **kw: object) -> tuple[int, str]:
    """(status, OCI error code, or the body's first line) of a GET."""
    async with http.get(url, **kw) as resp:  # type: ignore[arg-type]
        body = await resp.text()
        if resp.status >= 400:
            assert resp.headers["Content-Type"].startswith("application/json"), body
            return resp.status, json.loads(body)["errors"][0]["code"]
        return resp.status, body.splitlines()[0] if body else ""


async def test_metrics_are_not_for_anonymous_network_clients(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """Anonymous pulls allowed, as a node-local mirror runs: /metrics answers the
    node's own loopback clients (the default) and the subjects named; with loopback
    switched off (as a client listener that tenants reach looks to the rule), an
    anonymous client gets 401 with a challenge, another logged-in client 403, in
    OCI JSON, while pulls go on."""
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, *PROMETHEUS)
    auth = f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = true\n'
    default, closed, no_logins = (tmp_path / f"{n}.toml" for n in ("d", "c", "n"))
    default.write_text(auth)
    closed.write_text(auth + '[metrics]\nloopback = false\nsubjects = ["prometheus"]\n')
    no_logins.write_text("[metrics]\nloopback = false\n")
    prometheus = basic_auth(*PROMETHEUS)
    async with aiohttp.ClientSession() as http:
        async with running_proxy(registry.url, tmp_path / "a", config_file=default) as proxy:
            for path in ("/metrics", "/_cacheproxy/peers"):
                assert (await status_of(http, proxy.url + path))[0] == 200, path
        async with running_proxy(registry.url, tmp_path / "b", config_file=closed) as proxy:
            for path in ("/metrics", "/_cacheproxy/peers"):
                assert await status_of(http, proxy.url + path) == (401, "UNAUTHORIZED")
                wrong = basic_auth(PROMETHEUS[0], "not-the-password")
                assert await status_of(http, proxy.url + path, headers=wrong) == (
                    401,
                    "UNAUTHORIZED",
                )
                assert (await status_of(http, proxy.url + path, headers=prometheus))[0] == 200
            # Spoofed forwarding headers change nothing: the rule reads the socket.
            forged = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}
            assert (await status_of(http, proxy.url + "/metrics", headers=forged))[0] == 401
            assert (await status_of(http, proxy.url + "/v2/"))[0] == 200
            assert (await status_of(http, proxy.url + "/healthz"))[0] == 200
        async with running_proxy(registry.url, tmp_path / "c", config_file=no_logins) as proxy:
            assert await status_of(http, proxy.url + "/metrics") == (403, "DENIED")


async def test_the_metrics_listener_serves_metrics_and_the_probes_only(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """Prometheus scrapes a listener of its own (the pod IP, in a cluster); the client
    listener keeps its rule and the metrics listener serves nothing else."""
    config = tmp_path / "c.toml"
    config.write_text("[metrics]\nloopback = false\n")
    scrape_at = f"127.0.0.2:{free_port('127.0.0.2')}"
    async with (
        running_proxy(
            registry.url, tmp_path / "cache", config_file=config, metrics_listen=scrape_at
        ) as proxy,
        aiohttp.ClientSession() as http,
    ):
        listener = f"http://{scrape_at}"
        status, first = await status_of(http, listener + "/metrics")
        assert status == 200 and first.startswith("# HELP cacheproxy_")
        for path in ("/healthz", "/readyz"):
            assert (await status_of(http, listener + path))[0] == 200
        for path in ("/v2/", "/_cacheproxy/peers", "/dashboard", f"/v2/{unique('x')}/tags/list"):
            assert await status_of(http, listener + path) == (404, "NOT_FOUND"), path
        assert await status_of(http, proxy.url + "/metrics") == (403, "DENIED")
        assert (await status_of(http, proxy.url + "/v2/"))[0] == 200
