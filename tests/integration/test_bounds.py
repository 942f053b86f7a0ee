"""No request takes the proxy down: what an anonymous client can make it hold is bounded.

Tried as an attacker would: thousands of made-up ECR registries through the ``ecr``
preset, slow fills abandoned by their clients, floods of digests that do not exist.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cacheproxy.config import Config, UpstreamConfig
from cacheproxy.upstream.credentials import EcrCredentials
from tests.support.clients import run_process
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import push_blob, push_image
from tests.support.process import serve_process
from tests.support.proxy import running_proxy
from tests.support.registry import RegistryProcess
from tests.support.sessions import session_from
from tests.support.waiting import eventually

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
TOKEN_TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"


class FakeEcr:
    """An ECR API endpoint that holds every GetAuthorizationToken until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.released = asyncio.Event()
        self.fail = False
        #: Accounts whose tokens are handed out at once (a configured registry's).
        self.prompt: set[str] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert request.headers.get("X-Amz-Target") == TOKEN_TARGET
        self.calls += 1
        asked = set(json.loads(await request.read() or b"{}").get("registryIds") or [])
        if not asked & self.prompt:
            await self.released.wait()
        if self.fail and not asked & self.prompt:
            body = {"__type": "AccessDeniedException", "message": "no"}
            return web.json_response(body, status=400, content_type="application/x-amz-json-1.1")
        token = {"authorizationToken": "QVdTOnBhc3N3b3Jk", "expiresAt": 4102444800}
        data = {"authorizationData": [token]}
        return web.json_response(data, content_type="application/x-amz-json-1.1")

    async def __aenter__(self) -> FakeEcr:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.released.set()
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def fake_ecr(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeEcr]:
    async with FakeEcr() as ecr:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-west-2",
            # boto3 sends ECR calls here (service-specific endpoint variable).
            "AWS_ENDPOINT_URL_ECR": ecr.url,
        }.items():
            monkeypatch.setenv(key, value)
        yield ecr


def account(i: int) -> str:
    return f"{100000000000 + i}.dkr.ecr.us-west-2.amazonaws.com"


async def test_made_up_ecr_regions_never_hold_up_a_configured_registry(
    fake_ecr: FakeEcr, registry: RegistryProcess, tmp_path: Path
) -> None:
    """Clients name ECR registries in many regions through the ecr preset while its
    AWS threads hang: a configured ECR registry still gets its token (threads of its
    own), and a region AWS does not have is refused, with nothing built for it."""
    configured = "999999999999.dkr.ecr.eu-west-1.amazonaws.com"
    fake_ecr.prompt.add("999999999999")
    config = tmp_path / "c.toml"
    config.write_text(
        f'presets = ["ecr"]\ndefault_upstream = "{configured}"\n'
        f'[[upstream]]\nname = "{configured}"\nurl = "{registry.url}"\necr = true\n'
    )
    regions = ["us-east-1", "us-east-2", "eu-central-1", "ap-south-1", "sa-east-1"]
    # Two clients (one of the preset's AWS threads each), bounded per client no more
    # than the preset is bounded in all: what is tried here is the preset's threads.
    generous = {"ecr_new_registries_per_minute": 100, "ecr_registries_per_client": 100}
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config, **generous) as proxy,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        session_from("127.0.0.2", total=60) as other,
    ):

        async def ask(host: str, session: aiohttp.ClientSession = http) -> tuple[int, str]:
            url = f"{proxy.url}/v2/app/manifests/v1?ns={host}"
            async with session.get(url, headers=ACCEPT) as resp:
                body = await resp.json(content_type=None)
                return resp.status, body["errors"][0]["code"] if resp.status >= 400 else ""

        hosts = [f"{100000000000 + i}.dkr.ecr.{r}.amazonaws.com" for i, r in enumerate(regions * 6)]
        pending = [asyncio.create_task(ask(h, (http, other)[i % 2])) for i, h in enumerate(hosts)]
        # The preset's AWS threads are both stuck.
        await eventually(lambda: fake_ecr.calls >= 2, timeout=30, what="two AWS calls held")
        async with asyncio.timeout(20):
            # The configured registry's token, then its upstream's own answer.
            assert await ask(configured) == (404, "MANIFEST_UNKNOWN")
        preset = proxy.upstreams.preset
        assert preset is not None
        built = preset.aws.built
        made_up = [f"1000000000{i:02d}.dkr.ecr.xx-fake-{i}.amazonaws.com" for i in range(40)]
        made_up += ["100000000000.dkr.ecr.us-east-1.amazonaws.com.cn"]  # the wrong domain
        for host in made_up:
            assert await ask(host) == (403, "DENIED"), host
        assert preset.aws.built == built
        assert not {u.name for u in proxy.upstreams.all()} & set(made_up)
        fake_ecr.fail = True
        fake_ecr.released.set()
        statuses = await asyncio.gather(*pending)
        assert {status for status, _ in statuses} <= {503}


async def test_made_up_ecr_registries_are_bounded(fake_ecr: FakeEcr, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('presets = ["ecr"]\ndefault_upstream = "' + account(0) + '"\n')
    # Two clients, bounded per client no more than in all: what is tried here is the
    # bound on the set, and the preset's threads (one each), whoever fills them.
    settings = {
        "max_dynamic_upstreams": 8,
        "ecr_new_registries_per_minute": 1000,
        "ecr_registries_per_client": 1000,
    }
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config, **settings) as proxy,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        session_from("127.0.0.2", total=60) as other,
    ):

        async def ask(i: int) -> int:
            url = f"{proxy.url}/v2/app/manifests/v1?ns={account(i)}"
            async with (http, other)[i % 2].get(url, headers=ACCEPT) as resp:
                return resp.status

        pending = [asyncio.create_task(ask(i)) for i in range(300)]
        await eventually(lambda: fake_ecr.calls >= 2, timeout=30, what="two AWS calls held")
        # Every AWS thread is stuck on a token: the index and the disk still answer.
        # (Another client session: this one's connections are all waiting.)
        async with (
            aiohttp.ClientSession() as probe,
            asyncio.timeout(15),
            probe.get(proxy.url + "/readyz") as resp,
        ):
            assert resp.status == 200
        assert len(proxy.upstreams.all()) <= 8
        # No refresher for a registry that never gave a token.
        for up in proxy.upstreams.all():
            assert isinstance(up.credentials, EcrCredentials)
            assert not up.credentials.refreshing
        async with aiohttp.ClientSession() as probe, probe.get(proxy.url + "/metrics") as resp:
            metrics = await resp.text()
        labels = set(re.findall(r'upstream="([^"]+)"', metrics))
        assert len(labels) <= 8
        fake_ecr.fail = True
        fake_ecr.released.set()
        statuses = await asyncio.gather(*pending)
        assert set(statuses) <= {503}
        # A registry whose token just failed fails at once, without asking AWS again.
        assert await ask(299) == 503
        calls = fake_ecr.calls
        for _ in range(5):
            assert await ask(299) == 503
        assert fake_ecr.calls == calls
        assert len(proxy.upstreams.all()) <= 8


async def test_a_stranger_naming_made_up_accounts_evicts_and_starves_no_one(
    fake_ecr: FakeEcr, registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One address names 100 made-up accounts (in a real region) whose token calls hang,
    while a neighbour pulls from a registry of the preset: the neighbour's registry
    stays, its pulls and a new registry's token still work; the stranger is told
    TOOMANYREQUESTS beyond its few a minute, and its failed registries go at once and
    are answered from memory."""
    used, later = account(1), account(2)  # the neighbour's (their tokens come at once)
    fake_ecr.prompt |= {used[:12], later[:12]}
    named = Config.upstream

    def reachable(self: Config, name: str | None = None) -> UpstreamConfig:
        # The two real ones stand in at the test's registry: no ECR name resolves here.
        found = named(self, name)
        return replace(found, url=registry.url) if found.name in (used, later) else found

    monkeypatch.setattr(Config, "upstream", reachable)
    repo = f"bounds/{uuid.uuid4().hex[:8]}"
    image = await push_image(registry.url, repo, "v1", layer_sizes=(1000,))
    config = tmp_path / "c.toml"
    config.write_text(f'presets = ["ecr"]\ndefault_upstream = "{used}"\n')
    settings = {"max_dynamic_upstreams": 8}
    async with (
        # The clock of the upstream clients and of the bounds: a minute never passes.
        running_proxy(
            None, tmp_path / "cache", config_file=config, upstream_clock=lambda: 1000.0, **settings
        ) as proxy,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as neighbour,
        session_from("127.0.0.2", total=60) as stranger,
    ):

        async def pull(host: str) -> int:
            url = f"{proxy.url}/v2/{repo}/manifests/v1?ns={host}"
            async with neighbour.get(url, headers=ACCEPT) as resp:
                assert resp.status != 200 or await resp.read() == image.manifest
                return resp.status

        async def ask(i: int) -> tuple[int, str, str | None]:
            url = f"{proxy.url}/v2/app/manifests/v1?ns={account(100 + i)}"
            async with stranger.get(url, headers=ACCEPT) as resp:
                code = (await resp.json(content_type=None))["errors"][0]["code"]
                return resp.status, code, resp.headers.get("Retry-After")

        assert await pull(used) == 200
        kept = {up.name: up for up in proxy.upstreams.all()}[used]
        preset = proxy.upstreams.preset
        assert preset is not None
        flood = [asyncio.create_task(ask(i)) for i in range(100)]
        # Every request of the stranger's is answered or waits on an AWS call, and
        # its first call is held at AWS.
        await eventually(
            lambda: (
                sum(t.done() for t in flood) + preset.aws.waiting + preset.aws.queued >= 100
                and fake_ecr.calls >= 2
            ),
            timeout=30,
            what="the flood answered or waiting, its first call held",
        )
        answered = [t.result() for t in flood if t.done()]
        assert len(answered) == 96  # four a minute brought in; the rest refused at once
        assert {(status, code) for status, code, _ in answered} == {(429, "TOOMANYREQUESTS")}
        assert {retry for _, _, retry in answered} == {"60"}
        assert kept in proxy.upstreams.all()  # not evicted, not rebuilt
        async with asyncio.timeout(20):
            assert await pull(used) == 200
            calls = fake_ecr.calls
            assert await pull(later) == 200  # a new registry's token: AWS still answers
            assert fake_ecr.calls == calls + 1
        fake_ecr.fail = True
        fake_ecr.released.set()
        held = await asyncio.gather(*(t for t in flood if not t.done()))
        assert {status for status, _, _ in held} == {503}
        left = {up.name for up in proxy.upstreams.all()}
        assert left == {used, later}  # the failed ones went at once
        calls = fake_ecr.calls
        failed = next(i for i, t in enumerate(flood) if t.result()[0] == 503)
        for _ in range(3):
            assert (await ask(failed))[:2] == (503, "UNAVAILABLE")
        assert fake_ecr.calls == calls  # remembered: no AWS call, no place in the set
        assert await pull(used) == 200


async def test_manifests_never_wait_behind_abandoned_fills(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """Slow fills that hold every blob connection to an upstream, abandoned by their
    clients: a manifest from the same upstream is still answered."""
    name = f"bounds/{uuid.uuid4().hex[:8]}"
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(1000,))
    digests = [await push_blob(forwarder.url, name, uuid.uuid4().bytes * 4096) for _ in range(4)]
    stall = forwarder.set_fault(Fault(match=re.compile("/blobs/sha256"), kind="stall", offset=10))
    try:
        async with running_proxy(forwarder.url, tmp_path / "c", upstream_connections=4) as proxy:
            async with aiohttp.ClientSession() as http:
                clients = []
                for digest in digests:
                    resp = await http.get(f"{proxy.url}/v2/{name}/blobs/{digest}")
                    clients.append(resp)
                await eventually(lambda: proxy.fills.active >= 4, timeout=20, what="4 fills")
                for resp in clients:  # the clients go away; the fills hold on
                    resp.close()
            async with (
                aiohttp.ClientSession() as http,
                asyncio.timeout(15),
                http.get(f"{proxy.url}/v2/{name}/manifests/v1", headers=ACCEPT) as resp,
            ):
                assert resp.status == 200
                assert await resp.read() == image.manifest
    finally:
        stall.release()
        forwarder.clear_faults()


async def test_random_digests_cannot_exhaust_fills_files_or_the_upstream(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """A flood of requests for digests nobody has: every answer is quick and honest
    (404, or 429 past the bounds), the temp files and fills stay bounded, the probes
    keep answering, and asking again costs the upstream nothing for a while."""
    name = f"bounds/{uuid.uuid4().hex[:8]}"
    await push_image(forwarder.url, name, "v1", layer_sizes=(1000,))
    digests = [f"sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}" for _ in range(200)]
    settings = {"max_fills": 8, "max_queued_fills": 16, "max_fills_per_client": 4}
    async with (
        running_proxy(forwarder.url, tmp_path / "c", **settings) as proxy,
        aiohttp.ClientSession() as http,
    ):
        most_temp = 0

        async def ask(digest: str) -> int:
            nonlocal most_temp
            async with http.get(f"{proxy.url}/v2/{name}/blobs/{digest}") as resp:
                await resp.read()
                most_temp = max(most_temp, len(proxy.temp_files()))
                return resp.status

        async with asyncio.timeout(60):
            first = await asyncio.gather(*(ask(d) for d in digests))
            async with aiohttp.ClientSession() as probe, probe.get(proxy.url + "/healthz") as r:
                assert r.status == 200
        assert set(first) <= {404, 429}
        assert first.count(404) >= 4
        assert proxy.fills.active == 0
        assert most_temp <= 8
        asked = forwarder.count("GET", "/blobs/")
        # Asked again at once: the upstream's 404s are remembered.
        again = [d for d, status in zip(digests, first, strict=True) if status == 404]
        async with asyncio.timeout(30):
            second = await asyncio.gather(*(ask(d) for d in again))
        assert set(second) == {404}
        assert forwarder.count("GET", "/blobs/") == asked


async def test_running_fills_count_against_max_size(forwarder: Forwarder, tmp_path: Path) -> None:
    """What running fills will write is reserved: past max_size, further misses stream
    through uncached instead of piling up in tmp/; every client still gets its bytes."""
    name = f"bounds/{uuid.uuid4().hex[:8]}"
    blobs = {}
    for _ in range(6):
        data = uuid.uuid4().bytes * 25_000  # 400 kB each
        blobs[await push_blob(forwarder.url, name, data)] = data
    forwarder.throttle_bps = 1_500_000
    try:
        async with (
            running_proxy(forwarder.url, tmp_path / "c", max_size="1MB") as proxy,
            aiohttp.ClientSession() as http,
        ):
            most_reserved = 0

            async def fetch(digest: str) -> bytes:
                nonlocal most_reserved
                async with http.get(f"{proxy.url}/v2/{name}/blobs/{digest}") as resp:
                    assert resp.status == 200
                    chunks = []
                    async for chunk in resp.content.iter_chunked(65536):
                        chunks.append(chunk)
                        most_reserved = max(most_reserved, proxy.fills.budget.reserved)
                    return b"".join(chunks)

            def coming(pull: asyncio.Task[bytes], before: tuple[int, int]) -> bool:
                state = (proxy.fills.budget.reserved, proxy.fills.stats.streamed_through)
                return pull.done() or state != before

            async with asyncio.timeout(60):
                pulls = []
                for digest in blobs:
                    # As a runtime pulls an image: the next layer once this one is coming.
                    before = (proxy.fills.budget.reserved, proxy.fills.stats.streamed_through)
                    pulls.append(asyncio.create_task(fetch(digest)))
                    check = functools.partial(coming, pulls[-1], before)
                    await eventually(check, timeout=60, interval=0.01, what="the layer coming")
                got = await asyncio.gather(*pulls)
            assert got == list(blobs.values())
            assert proxy.fills.stats.streamed_through >= 2
            assert 0 < most_reserved <= 1_000_000 + 400_000
    finally:
        forwarder.throttle_bps = None


async def test_failures_on_purpose_do_not_flood_the_log(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """An attacker makes every fill fail (the upstream answers 500 to blobs): the
    process's log stays small, each kind of warning said a few times, then counted."""
    name = f"bounds/{uuid.uuid4().hex[:8]}"
    digests = [await push_blob(forwarder.url, name, uuid.uuid4().bytes * 64) for _ in range(60)]
    forwarder.set_fault(Fault(match=re.compile("/blobs/sha256"), kind="status", status=500))
    config = tmp_path / "c.toml"
    config.write_text("upstream_retries = 0\nmax_fills_per_client = 1000\n")
    log = tmp_path / "serve.log"
    args = [
        "--upstream",
        forwarder.url,
        "--config",
        str(config),
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    try:
        async with serve_process(*args, log=log) as (_, url), aiohttp.ClientSession() as http:
            for _ in range(5):
                for digest in digests:
                    async with http.get(f"{url}/v2/{name}/blobs/{digest}") as resp:
                        assert resp.status == 503
    finally:
        forwarder.clear_faults()
    warnings = [ln for ln in log.read_text().splitlines() if " WARNING " in ln or " ERROR " in ln]
    assert len(warnings) <= 40, "\n".join(warnings[-5:])


async def test_a_blob_larger_than_the_cache_is_served_but_never_kept(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = f"bounds/{uuid.uuid4().hex[:8]}"
    data = uuid.uuid4().bytes * 200_000  # 3.2 MB
    digest = await push_blob(forwarder.url, name, data)
    async with (
        running_proxy(forwarder.url, tmp_path / "c", max_size="1MB") as proxy,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(2):
            async with http.get(f"{proxy.url}/v2/{name}/blobs/{digest}") as resp:
                assert resp.status == 200
                assert await resp.read() == data
            # The temp file goes with its last reader (the response's end, then).
            await eventually(
                lambda: not proxy.fills.active and not proxy.temp_files(),
                timeout=10,
                what="the fill and its temp file gone",
            )
            assert not proxy.blob_path(digest).exists()
        assert proxy.fills.budget.reserved == 0


async def test_import_refuses_what_does_not_fit_before_writing_it(tmp_path: Path) -> None:
    """A 10 kB sparse tar announcing a 512 MiB blob: refused in one line, nothing
    written, with max_size and (without it) against the disk's free space too."""
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "blobs" / "sha256" / ("ab" * 32)).touch()
    os.truncate(layout / "blobs" / "sha256" / ("ab" * 32), 512 * 1024 * 1024)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    bundle = tmp_path / "sparse.tar"
    made = await run_process(
        "tar", "-S", "-C", str(layout), "-cf", str(bundle), "oci-layout", "index.json", "blobs"
    )
    assert made.returncode == 0, made.stderr
    assert bundle.stat().st_size < 64 * 1024
    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "cacheproxy", "import", "--cache-dir", str(cache)]
    argv += ["--upstream", "http://127.0.0.1:9", str(bundle)]
    refused = await run_process(*argv, env={"CACHEPROXY_MAX_SIZE": "10MB"}, timeout=60)
    assert refused.returncode == 1
    assert "does not fit in the cache" in refused.stderr
    assert "Traceback" not in refused.stderr
    written = sum(
        p.stat().st_size for p in cache.rglob("*") if p.is_file() and "index" not in p.parts
    )
    assert written < 1024 * 1024
