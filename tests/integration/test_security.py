"""Attacks on a running proxy: each test reproduces one and checks it fails.

The setting is the one a deployment has: a public upstream, a private one whose
Basic credentials the proxy holds, client authentication on.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import random
import signal
import sqlite3
import ssl
import stat
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from cacheproxy.http.keys import CLIENT_AUTH, SAVINGS
from cacheproxy.http.passwords import bcrypt_check, cost_of
from cacheproxy.peers.signing import HEADER, sign
from tests.support import rawhttp
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import basic_auth, push_image
from tests.support.process import serve_process
from tests.support.proxy import running_proxy
from tests.support.rawhttp import request as raw_request
from tests.support.registry import RegistryProcess, free_port, write_htpasswd
from tests.support.tls import self_signed
from tests.support.tokenserver import TokenServer
from tests.support.waiting import eventually

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
ROBOT = ("robot", "robot-s3cret-pass")


@pytest.fixture(scope="module")
def private_registry(
    require_binaries: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    """An upstream that wants Basic credentials (the proxy holds them)."""
    with RegistryProcess(tmp_path_factory.mktemp("private"), htpasswd=ROBOT) as reg:
        yield reg


async def get(
    url: str, headers: dict[str, str] | None = None, source: str | None = None
) -> tuple[int, bytes]:
    """GET ``url`` (from the loopback address ``source``, if given)."""
    local = (source, 0) if source is not None else None
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=local)) as http,
        http.get(url, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.read()


async def test_comment_lines_in_tokens_file_are_not_tokens(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    name = f"sec/{uuid.uuid4().hex[:8]}"
    await push_image(registry.url, name, "v1", layer_sizes=(1000,))
    tokens = tmp_path / "tokens"
    tokens.write_text(
        "# tokens for the CI runners: <token> <name>\n"
        "\n"
        "   \n"
        "#disabled-token-0123456789 old-runner\n"
        "tok-0123456789abcdef builder\n"
    )
    config = tmp_path / "c.toml"
    config.write_text(f'[auth]\ntokens_file = "{tokens}"\nanonymous = false\n')
    async with running_proxy(registry.url, tmp_path / "cache", config_file=config) as proxy:
        url = f"{proxy.url}/v2/{name}/manifests/v1"
        for value in ("#", "# tokens", "#disabled-token-0123456789", "", " "):
            code, _ = await get(url, {**ACCEPT, "Authorization": f"Bearer {value}"})
            assert code == 401, value
        code, _ = await get(url, {**ACCEPT, "Authorization": "Bearer tok-0123456789abcdef"})
        assert code == 200


async def test_comment_lines_in_htpasswd_are_not_logins(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    name = f"sec/{uuid.uuid4().hex[:8]}"
    await push_image(registry.url, name, "v1", layer_sizes=(1000,))
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, "ci", "ci-password-1")
    disabled = tmp_path / "disabled"
    write_htpasswd(disabled, "old", "old-password-1")
    empty_user = tmp_path / "empty"
    write_htpasswd(empty_user, "", "no-name-password")
    # A commented-out entry and an entry without a user name are not logins.
    htpasswd.write_text(
        "# users of the proxy\n\n#"
        + disabled.read_text()
        + empty_user.read_text()
        + htpasswd.read_text()
    )
    config = tmp_path / "c.toml"
    config.write_text(
        f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = false\n'
        '[metrics]\nloopback = false\nsubjects = ["ops"]\n'
    )
    async with running_proxy(registry.url, tmp_path / "cache", config_file=config) as proxy:
        url = f"{proxy.url}/v2/{name}/manifests/v1"
        assert (await get(url, {**ACCEPT, **basic_auth("#old", "old-password-1")}))[0] == 401
        assert (await get(url, {**ACCEPT, **basic_auth("", "no-name-password")}))[0] == 401
        assert (await get(url, {**ACCEPT, **basic_auth("ci", "ci-password-1")}))[0] == 200


async def test_token_cache_is_bounded_under_made_up_repository_names(
    token_server: TokenServer, token_registry: RegistryProcess, tmp_path: Path
) -> None:
    """Every repository name is a token scope: names must not grow the cache forever."""
    async with (
        running_proxy(token_registry.url, tmp_path / "cache") as proxy,
        aiohttp.ClientSession() as http,
    ):
        tokens = proxy.upstreams.get().tokens
        tokens.limit = 16  # the default is larger; the rule is the same
        for i in range(48):
            url = f"{proxy.url}/v2/made-up/{uuid.uuid4().hex[:10]}-{i}/manifests/v1"
            async with http.get(url, headers=ACCEPT) as resp:
                assert resp.status == 404
        assert tokens.fetches == 48
        assert len(tokens) <= 16


async def test_credentials_in_an_upstream_url_are_never_shown(
    private_registry: RegistryProcess, tmp_path: Path
) -> None:
    """``--upstream http://user:pass@host``: the login is used, and shown nowhere."""
    name = f"sec/{uuid.uuid4().hex[:8]}"
    image = await push_image(
        private_registry.url, name, "v1", layer_sizes=(1000,), headers=basic_auth(*ROBOT)
    )
    user, password = ROBOT
    upstream = f"http://{user}:{password}@{private_registry.host}"
    cache, log = tmp_path / "cache", tmp_path / "serve.log"
    args = ("--upstream", upstream, "--cache-dir", str(cache), "--log-level", "DEBUG")
    async with (
        serve_process(*args, log=log) as (proc, url),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{url}/v2/{name}/manifests/v1", headers=ACCEPT) as resp:
            assert resp.status == 200  # the login from the URL reached the upstream
            assert await resp.read() == image.manifest
        layer = image.layers[0].digest
        async with http.get(f"{url}/v2/{name}/blobs/{layer}") as resp:
            assert resp.status == 200
        shown = []
        for path in ("/metrics", "/dashboard/data", "/_cacheproxy/peers"):
            async with http.get(url + path) as resp:
                shown.append(await resp.text())
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    with sqlite3.connect(cache / "ledger.db") as db:
        upstreams = [row[0] for row in db.execute("SELECT DISTINCT upstream FROM usage")]
    assert upstreams == [private_registry.host]
    for text in (*shown, log.read_text(), repr(upstreams)):
        assert password not in text
        assert f"{user}:" not in text and f"{user}@" not in text


async def test_cluster_view_and_metrics_are_for_the_subjects_named(
    private_registry: RegistryProcess, tmp_path: Path
) -> None:
    """They name upstreams (ECR account IDs) and members: not for anonymous eyes, nor
    for every client that may pull (loopback clients are switched off here, as for
    a client listener every tenant reaches)."""
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(tmp_path / "tenant", "tenant", "tenant-password-1")
    write_htpasswd(htpasswd, "ops", "ops-password-1")
    htpasswd.write_text(htpasswd.read_text() + (tmp_path / "tenant").read_text())
    secret = tmp_path / "peer-secret"
    secret.write_bytes(b"cluster-secret-for-the-tests-0123456789")
    port = free_port()
    me = f"http://127.0.0.1:{port}"
    config = tmp_path / "c.toml"
    config.write_text(
        f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = false\n'
        '[metrics]\nloopback = false\nsubjects = ["ops"]\n'
    )
    upstream = f"http://{ROBOT[0]}:{ROBOT[1]}@{private_registry.host}"
    async with running_proxy(
        upstream,
        tmp_path / "cache",
        config_file=config,
        port=port,
        peers=(me,),
        self_url=me,
        peer_secret_file=secret,
    ) as proxy:
        login = basic_auth("ops", "ops-password-1")
        for path in ("/metrics", "/_cacheproxy/peers", "/_cacheproxy/peers?key=x"):
            assert (await get(proxy.url + path))[0] == 401, path
            assert (await get(proxy.url + path, login))[0] == 200, path
            tenant = basic_auth("tenant", "tenant-password-1")
            assert (await get(proxy.url + path, tenant))[0] == 403, path
        # The probes stay open for the kubelet.
        for path in ("/healthz", "/readyz"):
            assert (await get(proxy.url + path))[0] == 200, path
        # The peer path keeps its own HMAC and needs no client login.
        path = f"/_cacheproxy/peer/blobs/sha256:{'a' * 64}"
        query = urlencode(sorted({"repo": "made-up/x", "upstream": private_registry.host}.items()))
        unsigned, _ = await get(f"{proxy.url}{path}?{query}")
        assert unsigned == 401
        signed = {
            HEADER: sign(b"cluster-secret-for-the-tests-0123456789", "GET", f"{path}?{query}", me)
        }
        assert (await get(f"{proxy.url}{path}?{query}", signed))[0] == 404
        # No dot-segment walks from an open path into the registry API.
        address = ("127.0.0.1", port)
        for target in ("/healthz/../v2/", "/_cacheproxy/peer/../../v2/", "/readyz/%2e%2e/v2/"):
            answer = await asyncio.to_thread(raw_request, address, "GET", target)
            assert answer.status in (401, 404), target


async def test_dashboard_shows_only_what_the_client_may_pull(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    team, other = f"team/{uuid.uuid4().hex[:6]}", f"other/{uuid.uuid4().hex[:6]}"
    for repo in (team, other):
        await push_image(registry.url, repo, "v1", layer_sizes=(1000,))
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, "admin", "admin-password-1")
    users = htpasswd.read_text()
    write_htpasswd(htpasswd, "ci", "ci-password-1")
    htpasswd.write_text(users + htpasswd.read_text())
    up = registry.host
    config = tmp_path / "c.toml"
    config.write_text(
        f'[auth]\nhtpasswd = "{htpasswd}"\n'
        f'[[access]]\nsubjects = ["admin"]\nallow = ["*"]\n'
        f'[[access]]\nsubjects = ["ci"]\nallow = ["{up}/team/*"]\n'
        f'[[access]]\nsubjects = ["anonymous"]\nallow = ["{up}/team/*", "{up}/other/*"]\n'
    )
    admin, ci = basic_auth("admin", "admin-password-1"), basic_auth("ci", "ci-password-1")
    async with running_proxy(registry.url, tmp_path / "cache", config_file=config) as proxy:
        data = f"{proxy.url}/dashboard/data"
        assert (await get(f"{proxy.url}/v2/{team}/manifests/v1", {**ACCEPT, **ci}))[0] == 200
        code, body = await get(data, ci)
        assert code == 200 and team.encode() in body  # everything shown is ci's to pull
        # The dashboard sums every repository of an upstream: a client that may
        # not pull one of them sees none of it.
        assert (await get(f"{proxy.url}/v2/{other}/manifests/v1", ACCEPT))[0] == 200
        await proxy.app[SAVINGS].ledger.flush()
        code, body = await get(data, ci)
        assert code == 403 and other.encode() not in body
        code, body = await get(data)  # anonymous may pull both, but must log in to see
        assert code == 401 and other.encode() not in body
        code, body = await get(data, admin)
        assert code == 200 and other.encode() in body and team.encode() in body


async def test_requests_for_made_up_repositories_leave_no_ledger_rows(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """Only answered pulls are counted: names a client invents add no row.

    Made-up names ask for unknown tags and digests, and for digests the cache
    holds under a real repository: whatever is not answered must not count.
    """
    name = f"sec/{uuid.uuid4().hex[:8]}"
    image = await push_image(registry.url, name, "v1", layer_sizes=(1000,))
    async with (
        running_proxy(registry.url, tmp_path / "cache") as proxy,
        aiohttp.ClientSession() as http,
    ):
        for path in ("manifests/v1", f"blobs/{image.layers[0].digest}"):
            async with http.get(f"{proxy.url}/v2/{name}/{path}", headers=ACCEPT) as resp:
                assert resp.status == 200
        answered = {name}
        unknown = f"sha256:{'a' * 64}"
        for i in range(40):
            repo = f"made-up/{uuid.uuid4().hex[:8]}-{i}"
            paths = (
                f"manifests/v{i}",
                f"manifests/{unknown}",
                f"manifests/{image.digest}",
                f"blobs/{unknown}",
                f"blobs/{image.layers[0].digest}",
                "tags/list",
            )
            for method in ("GET", "HEAD"):
                for path in paths:
                    url = f"{proxy.url}/v2/{repo}/{path}"
                    async with http.request(method, url, headers=ACCEPT) as resp:
                        await resp.read()
                        if resp.status < 300 and method == "GET":
                            answered.add(repo)
        await proxy.app[SAVINGS].ledger.flush()
    with sqlite3.connect(tmp_path / "cache" / "ledger.db") as db:
        counted = {row[0] for row in db.execute("SELECT DISTINCT repo FROM usage")}
    assert name in counted
    assert counted <= answered


def htpasswd_of(path: Path, users: dict[str, str], rounds: int) -> dict[str, bytes]:
    import bcrypt

    hashes = {u: bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=rounds)) for u, p in users.items()}
    path.write_text("".join(f"{u}:{h.decode()}\n" for u, h in hashes.items()))
    return hashes


async def test_an_unknown_user_costs_one_bcrypt_check_of_the_same_cost(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """User enumeration by timing: every failed login goes through one bcrypt check
    of the file's cost, known user or not (counted through the checker)."""
    htpasswd = tmp_path / "htpasswd"
    hashes = htpasswd_of(htpasswd, {"ci": "ci-password-1"}, rounds=6)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = false\n'
        '[metrics]\nloopback = false\nsubjects = ["ops"]\n'
    )
    async with running_proxy(registry.url, tmp_path / "cache", config_file=config) as proxy:
        checked: list[bytes] = []

        def counting(password: bytes, hashed: bytes) -> bool:
            checked.append(hashed)
            return bcrypt_check(password, hashed)

        proxy.app[CLIENT_AUTH].passwords.checker = counting
        assert (await get(f"{proxy.url}/v2/", basic_auth("ci", "wrong-password")))[0] == 401
        assert checked == [hashes["ci"]]
        for user in ("nobody", "root", "admin"):
            assert (await get(f"{proxy.url}/v2/", basic_auth(user, "wrong-password")))[0] == 401
        assert len(checked) == 4
        assert all(cost_of(h) == 6 for h in checked[1:])
        assert hashes["ci"] not in checked[1:]
        assert (await get(f"{proxy.url}/v2/", basic_auth("ci", "ci-password-1")))[0] == 200


async def test_a_burst_of_bad_logins_is_bounded_and_spares_the_probes(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """bcrypt runs on its own small executor; past the bound a login waits for
    nothing (429 with Retry-After), and /readyz never waits behind bcrypt. (One
    address holds a share of the checks: the burst comes from four, and the next
    login from one of them: a new address would take a place of theirs.)"""
    htpasswd = tmp_path / "htpasswd"
    htpasswd_of(htpasswd, {"ci": "ci-password-1"}, rounds=4)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = false\n'
        '[metrics]\nloopback = false\nsubjects = ["ops"]\n'
    )
    async with running_proxy(registry.url, tmp_path / "cache", config_file=config) as proxy:
        passwords = proxy.app[CLIENT_AUTH].passwords
        gate = threading.Event()

        def stuck(password: bytes, hashed: bytes) -> bool:
            gate.wait(30)
            return bcrypt_check(password, hashed)

        passwords.checker = stuck
        try:
            share = passwords.max_pending // 4
            burst = [
                asyncio.create_task(
                    get(
                        f"{proxy.url}/v2/",
                        basic_auth(f"u{i}", f"guess-{i}"),
                        f"127.0.0.{2 + i // share}",
                    )
                )
                for i in range(passwords.max_pending)
            ]
            await eventually(
                lambda: passwords.pending >= passwords.max_pending,
                timeout=10,
                what="every check pending",
            )
            # Full: the next login is answered at once, while every check is stuck.
            connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=connector) as http, asyncio.timeout(5):
                async with http.get(f"{proxy.url}/v2/", headers=basic_auth("ci", "x")) as resp:
                    assert resp.status == 429
                    assert resp.headers["Retry-After"] == "1"
                    assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
                for probe in ("/readyz", "/healthz"):
                    async with http.get(proxy.url + probe) as resp:
                        assert resp.status == 200, probe
            assert not any(task.done() for task in burst)
        finally:
            gate.set()
        async with asyncio.timeout(30):
            assert [code for code, _ in await asyncio.gather(*burst)] == [401] * len(burst)
        assert passwords.pending == 0
        assert (await get(f"{proxy.url}/v2/", basic_auth("ci", "ci-password-1")))[0] == 200


@pytest.mark.wallclock
async def test_wrong_password_timing_does_not_tell_users_apart(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """The real timing (run with ``-m wallclock``): medians within a factor of 2."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd_of(htpasswd, {"ci": "ci-password-1"}, rounds=10)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = false\n'
        '[metrics]\nloopback = false\nsubjects = ["ops"]\n'
    )
    async with running_proxy(registry.url, tmp_path / "cache", config_file=config) as proxy:

        async def seconds(user: str, i: int) -> float:
            started = time.perf_counter()
            code, _ = await get(f"{proxy.url}/v2/", basic_auth(user, f"wrong-{i}"))
            assert code == 401
            return time.perf_counter() - started

        known = [await seconds("ci", i) for i in range(7)]
        unknown = [await seconds(f"nobody{i}", i) for i in range(7)]
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 < ratio < 2.0, (known, unknown)


async def test_credentials_never_reach_a_realm_on_another_port_of_the_same_address(
    token_server: TokenServer, token_registry: RegistryProcess, tmp_path: Path
) -> None:
    """The upstream's realm is on 127.0.0.1 like it, on another port: another
    service, another owner. The pull still works, with an anonymous token."""
    name = f"sec/{uuid.uuid4().hex[:8]}"
    push = {"Authorization": "Bearer " + token_server.issue(f"repository:{name}:pull,push")}
    image = await push_image(token_registry.url, name, "v1", layer_sizes=(1000,), headers=push)
    config = tmp_path / "c.toml"
    config.write_text(
        f'presets = []\n[[upstream]]\nurl = "{token_registry.url}"\n'
        f'username = "{ROBOT[0]}"\npassword = "{ROBOT[1]}"\n'
    )
    async with running_proxy(None, tmp_path / "cache", config_file=config) as proxy:
        code, body = await get(f"{proxy.url}/v2/{name}/manifests/v1", ACCEPT)
        assert code == 200 and body == image.manifest
    assert token_server.requests
    assert all(r.authorization is None for r in token_server.requests)


async def test_redirects_to_addresses_only_the_proxy_host_reaches_are_not_followed(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """An upstream (on loopback) redirects a blob to 0.0.0.0, the unspecified
    address (which reaches this host's own services): the proxy does not go."""
    name = f"sec/{uuid.uuid4().hex[:8]}"
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(1000,))
    hits: list[str] = []

    async def internal(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="instance credentials")

    app = web.Application()
    app.router.add_get("/{tail:.*}", internal)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        layer = image.layers[0].digest
        forwarder.set_fault(
            Fault(
                f"/blobs/{layer}",
                "status",
                status=307,
                headers={"Location": f"http://0.0.0.0:{port}/latest/meta-data/iam"},
            )
        )
        async with running_proxy(forwarder.url, tmp_path / "cache") as proxy:
            code, _ = await get(f"{proxy.url}/v2/{name}/blobs/{layer}")
            assert code in (502, 503)
            forwarder.clear_faults()
            # An ordinary answer from the same upstream is still served.
            code, body = await get(f"{proxy.url}/v2/{name}/blobs/{layer}")
            assert code == 200 and body == image.blob_data[layer]
    finally:
        await runner.cleanup()
    assert hits == []


async def _bind_default_ports(
    apps: tuple[web.Application, web.Application], context: ssl.SSLContext
) -> tuple[str, list[web.AppRunner]]:
    """The two apps on 127.0.0.X:443 (TLS) and :80, for a free X."""
    for _ in range(20):
        host = f"127.0.0.{random.randrange(10, 250)}"
        runners = [web.AppRunner(app, access_log=None) for app in apps]
        try:
            for runner, port, tls in zip(runners, (443, 80), (context, None), strict=True):
                await runner.setup()
                await web.TCPSite(runner, host, port, ssl_context=tls).start()
        except OSError as exc:
            for runner in runners:
                await runner.cleanup()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return host, runners
    raise AssertionError("no 127.0.0.X had ports 443 and 80 free")


async def test_https_upstream_credentials_never_go_over_plain_http(tmp_path: Path) -> None:
    """An https upstream names an http realm and redirects a blob to http, on its
    own host: neither its login nor its token may travel in clear text."""
    data = b"layer bytes " * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    login = basic_auth(*ROBOT)["Authorization"]
    seen_plain: list[dict[str, str]] = []
    where: dict[str, str] = {}

    async def registry(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer tok-1":
            realm = f'Bearer realm="http://{where["host"]}/token",service="reg"'
            return web.Response(status=401, headers={"WWW-Authenticate": realm})
        location = f"http://{where['host']}/storage/{digest}"
        return web.Response(status=307, headers={"Location": location})

    async def plain(request: web.Request) -> web.Response:
        seen_plain.append(dict(request.headers))
        if request.path == "/token":
            return web.json_response({"token": "tok-1", "expires_in": 300})
        return web.Response(body=data)

    secure, clear = web.Application(), web.Application()
    secure.router.add_route("*", "/{tail:.*}", registry)
    clear.router.add_route("*", "/{tail:.*}", plain)
    cert_dir = tmp_path / "cert"
    cert_dir.mkdir()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # The certificate names the address, which is known once bound.
    host, runners = await _bind_default_ports((secure, clear), context)
    try:
        cert, key = self_signed(cert_dir, host)
        context.load_cert_chain(cert, key)
        where["host"] = host
        config = tmp_path / "c.toml"
        config.write_text(
            f'presets = []\n[[upstream]]\nurl = "https://{host}"\nca_file = "{cert}"\n'
            f'username = "{ROBOT[0]}"\npassword = "{ROBOT[1]}"\n'
        )
        async with running_proxy(None, tmp_path / "cache", config_file=config) as proxy:
            code, body = await get(f"{proxy.url}/v2/app/blobs/{digest}")
            assert code == 200 and body == data
    finally:
        for runner in runners:
            await runner.cleanup()
    assert [h.get("Host", "").split(":")[0] for h in seen_plain] == [host, host]
    assert all("Authorization" not in headers for headers in seen_plain), seen_plain
    assert login not in repr(seen_plain) and "tok-1" not in repr(seen_plain)


async def test_a_namespace_with_cr_lf_is_never_echoed_raw(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """``?ns=`` with CR/LF that still names the upstream once trimmed: the answer
    echoes the normalised host, never the raw value (a header injection)."""
    name = f"sec/{uuid.uuid4().hex[:8]}"
    image = await push_image(registry.url, name, "v1", layer_sizes=(1000,))
    async with running_proxy(registry.url, tmp_path / "cache") as proxy:
        host, port = proxy.host.rsplit(":", 1)
        for ns in (
            f"{registry.host}%0D%0A",
            f"%0D%0A{registry.host}",
            f"{registry.host.upper()}%0d%0aSet-Cookie:%20a=b",
            f"{registry.host}%0A%20",
        ):
            target = f"/v2/{name}/manifests/v1?ns={ns}"
            answer = await asyncio.to_thread(
                raw_request, (host, int(port)), "GET", target, [("Accept", ACCEPT["Accept"])]
            )
            assert answer.status in (200, 403), (ns, answer)
            echoed = answer.header("OCI-Namespace")
            assert echoed in (None, registry.host), (ns, echoed)
            assert answer.header("Set-Cookie") is None
            if answer.status == 200:
                assert answer.body == image.manifest
                assert echoed == registry.host


@pytest.mark.parametrize(
    "line",
    [
        b"GET /v2/\xff\xfe/manifests/latest HTTP/1.1",
        b"GET /v2/" + b"a" * 9000 + b"/manifests/latest HTTP/1.1",
        b"BREW /v2/ HTTP/1.1",
        b"GET /v2/<script>alert(1)</script> HTTP/9.9",
    ],
    ids=["non-ascii-path", "line-over-8k", "unknown-method", "bad-version"],
)
async def test_request_line_errors_answer_oci_json_without_echo(
    line: bytes, registry: RegistryProcess, tmp_path: Path
) -> None:
    async with running_proxy(registry.url, tmp_path / "cache") as proxy:
        host, port = proxy.host.rsplit(":", 1)
        raw = line + b"\r\nHost: x\r\n\r\n"
        out = await asyncio.to_thread(rawhttp.exchange, (host, int(port)), raw)
    assert len(out.responses) == 1, out
    answer = out.responses[0]
    assert answer.status == 400
    assert answer.header(
        "Content-Type",
    ).startswith("application/json")  # type: ignore[union-attr]
    error = json.loads(answer.body)["errors"][0]
    assert error["code"] == "UNSUPPORTED"
    for piece in (b"\xff", b"aaaa", b"BREW", b"script", b"9.9"):
        assert piece not in answer.body


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything under it, by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@pytest.mark.parametrize("umask", [0o022, 0o000])
async def test_cached_private_layers_are_readable_by_the_proxy_user_only(
    umask: int, private_registry: RegistryProcess, tmp_path: Path
) -> None:
    """Another local user must not read private layers, the index or the ledger:
    files 0600 and directories 0700, whatever the umask."""
    name = f"sec/{uuid.uuid4().hex[:8]}"
    image = await push_image(
        private_registry.url, name, "v1", layer_sizes=(300_000,), headers=basic_auth(*ROBOT)
    )
    layer = image.layers[0].digest
    async with Forwarder(private_registry.url) as forwarder:
        stall = forwarder.set_fault(Fault(f"/blobs/{layer}", "stall", offset=100_000))
        upstream = f"http://{ROBOT[0]}:{ROBOT[1]}@{forwarder.host}"
        cache = tmp_path / "cache"
        previous = os.umask(umask)
        try:
            async with running_proxy(upstream, cache) as proxy:
                assert (await get(f"{proxy.url}/v2/{name}/manifests/v1", ACCEPT))[0] == 200
                filling = asyncio.create_task(get(f"{proxy.url}/v2/{name}/blobs/{layer}"))
                await eventually(
                    lambda: stall.hits and proxy.temp_files(),
                    timeout=10,
                    what="the fill writing its temp file",
                )
                temp_modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in proxy.temp_files()}
                stall.release()
                code, body = await filling
                assert code == 200 and body == image.blob_data[layer]
                await proxy.app[SAVINGS].ledger.flush()
                seen = modes(cache)
        finally:
            os.umask(previous)
    assert temp_modes and set(temp_modes.values()) == {0o600}, temp_modes
    assert any(path.startswith("blobs/sha256/") for path in seen)
    assert {"index/cache.db", "ledger.db", "ledger.db-wal"} <= set(seen), sorted(seen)
    wide = {path: oct(mode) for path, mode in seen.items() if mode & 0o077}
    assert wide == {}


async def test_the_cache_root_is_closed_at_start(registry: RegistryProcess, tmp_path: Path) -> None:
    """A cache directory left open by an older version or a careless mkdir: the
    root is set to 0700 at start; nothing below it is changed."""
    cache = tmp_path / "cache"
    (cache / "blobs").mkdir(parents=True)
    os.chmod(cache, 0o755)
    os.chmod(cache / "blobs", 0o755)
    async with running_proxy(registry.url, cache):
        pass
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / "blobs").stat().st_mode) == 0o755


async def cli(*args: str) -> tuple[int, str]:
    """Run ``cacheproxy ARGS`` to the end (bounded); its exit code and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEPROXY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cacheproxy",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


async def test_cache_commands_never_touch_a_running_servers_fills(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """gc, verify, import and prefetch remove temp files at start: against a running
    server they would delete its fills. They refuse; readers (ls) run beside it."""
    name = f"sec/{uuid.uuid4().hex[:8]}"
    image = await push_image(registry.url, name, "v1", layer_sizes=(400_000,))
    layer = image.layers[0].digest
    cache = tmp_path / "cache"
    async with Forwarder(registry.url) as forwarder:
        stall = forwarder.set_fault(Fault(f"/blobs/{layer}", "stall", offset=100_000))
        where = ("--cache-dir", str(cache), "--upstream", forwarder.url)
        log = tmp_path / "serve.log"
        async with serve_process(*where, log=log) as (proc, url):
            filling = asyncio.create_task(get(f"{url}/v2/{name}/blobs/{layer}"))
            await eventually(
                lambda: stall.hits and list((cache / "tmp").iterdir()),
                timeout=10,
                what="the fill writing its temp file",
            )
            temp = list((cache / "tmp").iterdir())
            bundle = tmp_path / "bundle.tar"
            for command in (
                ("gc",),
                ("verify",),
                ("import", str(bundle)),
                ("prefetch", f"{name}:v1"),
            ):
                code, err = await cli(*command, *where)
                assert code == 1, (command, err)
                assert "server" in err and len(err.strip().splitlines()) == 1, err
            for command in (("ls",), ("gc", "--dry-run")):
                code, err = await cli(*command, *where)
                assert code == 0, (command, err)
            # A second server on the same cache would clean it too.
            code, err = await cli("serve", *where, "--listen", f"127.0.0.1:{free_port()}")
            assert code == 1 and "server" in err, err
            assert list((cache / "tmp").iterdir()) == temp
            stall.release()
            code, body = await filling
            assert code == 200 and body == image.blob_data[layer]
            # A killed server leaves no lock behind.
            proc.kill()
            await proc.wait()
        code, err = await cli("gc", *where)
        assert code == 0, err
