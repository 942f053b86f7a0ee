"""Who may read what: a digest is served under an (upstream, repository) only when
that upstream vouched for it there, and a tag is believed only from this node's own
upstream or a peer's signed answer.

Tried as an attacker would, against real ``cacheproxy serve`` processes with a
public and a private upstream (Basic credentials held by the proxy) and client auth
on: after an authorised client pulled a private image, an anonymous client names
its digests under a public repository, by path prefix and by ``?ns=``, with GET and
HEAD, for blobs and manifests, through stock skopeo, through a second node of the
cluster, and offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from cacheproxy.peers.ring import ranked
from cacheproxy.peers.signing import ANSWER_HEADER, HEADER, sign, verify_answer
from tests.support.clients import run_process, skopeo
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import OCI_INDEX, OCI_MANIFEST, PushedImage, basic_auth, push_image
from tests.support.process import serve_process
from tests.support.proxy import running_proxy
from tests.support.registry import RegistryProcess, free_port, write_htpasswd
from tests.support.waiting import eventually

ACCEPT = {
    "Accept": ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )
}
ROBOT = ("robot", "robot-upstream-password-1")
ALICE = ("alice", "alice-proxy-password-1")
SECRET = b"a-cluster-secret-of-enough-bytes"
PRIVATE = "private.test"
PUBLIC = "public.test"


@dataclass
class Upstreams:
    public: Forwarder
    private: Forwarder


@pytest.fixture
async def upstreams(
    registry: RegistryProcess, require_binaries: None, tmp_path: Path
) -> AsyncIterator[Upstreams]:
    with RegistryProcess(
        tmp_path / "private-registry", htpasswd=ROBOT, foreign_layers=True
    ) as private:
        async with Forwarder(registry.url) as pub, Forwarder(private.url) as priv:
            yield Upstreams(pub, priv)


def write_config(tmp_path: Path, ups: Upstreams, extra: str = "") -> Path:
    """Two upstreams (the private one with the proxy's own login), client auth on:
    alice may pull both, anonymous clients only the public one."""
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, *ALICE)
    config = tmp_path / "cacheproxy.toml"
    config.write_text(
        f'presets = []\ndefault_upstream = "{PUBLIC}"\n{extra}'
        f'[[upstream]]\nname = "{PUBLIC}"\nurl = "{ups.public.url}"\n'
        f'[[upstream]]\nname = "{PRIVATE}"\nurl = "{ups.private.url}"\n'
        f'username = "{ROBOT[0]}"\npassword = "{ROBOT[1]}"\n'
        f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = true\n'
        f'[[access]]\nsubjects = ["alice"]\nallow = ["*"]\n'
        f'[[access]]\nsubjects = ["anonymous"]\nallow = ["{PUBLIC}/*"]\n'
    )
    return config


async def push_private(
    ups: Upstreams, name: str, sizes: tuple[int, ...] = (3000, 5000)
) -> PushedImage:
    return await push_image(
        ups.private.url, name, "v1", layer_sizes=sizes, headers=basic_auth(*ROBOT), seed=name
    )


async def answer(
    http: aiohttp.ClientSession, method: str, url: str, headers: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """(status, OCI error code or "") of one request."""
    async with http.request(method, url, headers={**ACCEPT, **(headers or {})}) as resp:
        body = await resp.read()
        if resp.status < 400:
            return resp.status, ""
        if method == "HEAD":
            return resp.status, "(HEAD)"
        assert resp.headers["Content-Type"].startswith("application/json"), body
        return resp.status, json.loads(body)["errors"][0]["code"]


async def alice_pulls(proxy: str, image: PushedImage) -> None:
    """alice pulls the private image the way a runtime does, sending her login (skopeo
    sends one only when /v2/ challenges, which anonymous pulls rule out)."""
    login = basic_auth(*ALICE)
    base = f"{proxy}/v2/{PRIVATE}/{image.name}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/manifests/v1", headers={**ACCEPT, **login}) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.read() == image.manifest
        for blob in image.blobs:
            async with http.get(f"{base}/blobs/{blob.digest}", headers=login) as resp:
                assert resp.status == 200
                data = await resp.read()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest


async def test_private_digests_stay_private_under_other_repositories(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}")
    public_repo = f"lib/app-{uuid.uuid4().hex[:6]}"
    await push_image(upstreams.public.url, public_repo, "v1", layer_sizes=(2000,))
    config = write_config(tmp_path, upstreams)
    args = ["--config", str(config), "--cache-dir", str(tmp_path / "cache")]
    async with serve_process(*args, log=tmp_path / "serve.log") as (_, url):
        await alice_pulls(url, secret)
        digests = [d.digest for d in secret.blobs]
        heads_before = upstreams.public.count("HEAD")
        async with aiohttp.ClientSession() as http:
            for digest in digests:
                for method in ("GET", "HEAD"):
                    by_prefix = f"{url}/v2/{PUBLIC}/{public_repo}/blobs/{digest}"
                    by_ns = f"{url}/v2/{public_repo}/blobs/{digest}?ns={PUBLIC}"
                    by_default = f"{url}/v2/{public_repo}/blobs/{digest}"
                    for target in (by_prefix, by_ns, by_default):
                        status, code = await answer(http, method, target)
                        assert status == 404, (method, target)
                        assert code in ("BLOB_UNKNOWN", "(HEAD)")
            manifest = f"{url}/v2/{PUBLIC}/{public_repo}/manifests/{secret.digest}"
            assert await answer(http, "GET", manifest) == (404, "MANIFEST_UNKNOWN")
            assert (await answer(http, "HEAD", manifest))[0] == 404
            # The private upstream's own repositories need a login, as before.
            private = f"{url}/v2/{PRIVATE}/{secret.name}/blobs/{digests[0]}"
            assert (await answer(http, "GET", private))[0] == 401
        # One confirmation per (repository, digest), remembered: asking again costs none.
        asked = upstreams.public.count("HEAD") - heads_before
        assert 0 < asked <= len(digests) + 1
        async with aiohttp.ClientSession() as http:
            for digest in digests:
                target = f"{url}/v2/{PUBLIC}/{public_repo}/blobs/{digest}"
                assert (await answer(http, "GET", target))[0] == 404
        assert upstreams.public.count("HEAD") - heads_before == asked
        # Stock skopeo, anonymous, by digest under the public repository: refused.
        host = url.removeprefix("http://")
        ref = f"docker://{host}/{PUBLIC}/{public_repo}@{secret.digest}"
        result = await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'anon'}")
        assert result.returncode != 0
        assert not (tmp_path / "anon" / "manifest.json").exists()


async def test_a_condition_never_turns_a_refusal_into_a_304(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    """If-None-Match naming a digest says the client holds it; under a repository
    that may not have it, the answer is the refusal the request without the header
    gets (RFC 9110 section 13.2.1), never a 304 or a 412; under its own, a 304."""
    secret = await push_private(upstreams, f"team/cond-{uuid.uuid4().hex[:6]}")
    public_repo = f"lib/app-{uuid.uuid4().hex[:6]}"
    await push_image(upstreams.public.url, public_repo, "v1", layer_sizes=(2000,))
    config = write_config(tmp_path, upstreams)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        await alice_pulls(proxy.url, secret)
        asked = [("manifests", secret.digest), *(("blobs", b.digest) for b in secret.blobs)]
        for kind, digest in asked:
            held = {"If-None-Match": f'"{digest}"'}
            own = f"{proxy.url}/v2/{PRIVATE}/{secret.name}/{kind}/{digest}"
            assert await answer(http, "GET", own, {**held, **basic_auth(*ALICE)}) == (304, "")
            other = f"{proxy.url}/v2/{PUBLIC}/{public_repo}/{kind}/{digest}"
            conditions = [held, {"If-None-Match": "*"}, {"If-Match": '"sha256:other"'}]
            for method in ("GET", "HEAD"):
                for condition in conditions:
                    refused = await answer(http, method, other, condition)
                    assert refused == await answer(http, method, other), (kind, condition)
                    assert refused[0] == 404, (kind, method, condition)


async def test_shared_layers_cost_one_head_and_own_pulls_cost_none(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    """The rule's price: a repository's own blobs are linked by its manifest (no HEAD);
    the first request for a digest under another repository costs one upstream HEAD."""
    seed = uuid.uuid4().hex
    first, second = f"lib/one-{seed[:6]}", f"lib/two-{seed[:6]}"
    image = await push_image(upstreams.public.url, first, "v1", layer_sizes=(4000,), seed=seed)
    await push_image(upstreams.public.url, second, "v1", layer_sizes=(4000,), seed=seed)
    config = write_config(tmp_path, upstreams)
    async with running_proxy(None, tmp_path / "cache", config_file=config) as proxy:
        host = proxy.host
        heads = upstreams.public.count("HEAD", "/blobs/")
        src = f"docker://{host}/{PUBLIC}/{first}:v1"
        (await skopeo("copy", "--src-tls-verify=false", src, f"dir:{tmp_path / 'a'}")).check()
        assert upstreams.public.count("HEAD", "/blobs/") == heads
        layer = image.layers[0].digest
        gets = upstreams.public.count("GET", f"/blobs/{layer}")
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                target = f"{proxy.url}/v2/{PUBLIC}/{second}/blobs/{layer}"
                assert await answer(http, "GET", target) == (200, "")
        assert upstreams.public.count("HEAD", f"/v2/{second}/blobs/{layer}") == 1
        assert upstreams.public.count("GET", f"/blobs/{layer}") == gets  # stored once


async def test_a_fill_in_flight_is_not_joined_under_another_repository(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    secret = await push_private(upstreams, f"team/big-{uuid.uuid4().hex[:6]}", (600_000,))
    layer = secret.layers[0].digest
    public_repo = f"lib/app-{uuid.uuid4().hex[:6]}"
    await push_image(upstreams.public.url, public_repo, "v1", layer_sizes=(2000,))
    config = write_config(tmp_path, upstreams)
    upstreams.private.throttle_bps = 200_000
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        url = f"{proxy.url}/v2/{PRIVATE}/{secret.name}/blobs/{layer}"

        async def alice() -> bytes:
            async with http.get(url, headers=basic_auth(*ALICE)) as resp:
                assert resp.status == 200
                return await resp.read()

        pull = asyncio.create_task(alice())
        await eventually(lambda: proxy.fills.active, timeout=20, what="alice's fill")
        target = f"{proxy.url}/v2/{PUBLIC}/{public_repo}/blobs/{layer}"
        assert await answer(http, "GET", target) == (404, "BLOB_UNKNOWN")
        assert (await answer(http, "HEAD", target))[0] == 404
        assert proxy.fills.active == 1  # still filling: the refusal did not wait for it
        upstreams.private.throttle_bps = None
        data = await pull
        assert hashlib.sha256(data).hexdigest() == layer.split(":")[1]


async def test_offline_serves_only_what_is_linked(upstreams: Upstreams, tmp_path: Path) -> None:
    secret = await push_private(upstreams, f"team/off-{uuid.uuid4().hex[:6]}")
    public_repo = f"lib/app-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path, upstreams)
    cache = tmp_path / "cache"
    async with running_proxy(None, cache, config_file=config) as proxy:
        await alice_pulls(proxy.url, secret)
    async with (
        running_proxy(None, cache, config_file=config, offline=True) as proxy,
        aiohttp.ClientSession() as http,
    ):
        before = upstreams.public.count() + upstreams.private.count()
        for blob in secret.blobs:
            target = f"{proxy.url}/v2/{PUBLIC}/{public_repo}/blobs/{blob.digest}"
            assert await answer(http, "GET", target) == (404, "BLOB_UNKNOWN")
        await alice_pulls(proxy.url, secret)
        assert upstreams.public.count() + upstreams.private.count() == before


# --- peers -------------------------------------------------------------------------------


@asynccontextmanager
async def cluster(
    tmp_path: Path, config: Path, k: int
) -> AsyncIterator[list[tuple[asyncio.subprocess.Process, str]]]:
    secret = tmp_path / "peer-secret"
    secret.write_bytes(SECRET)
    ports = [free_port() for _ in range(k)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    async with AsyncExitStack() as stack:
        nodes = []
        for i, (port, url) in enumerate(zip(ports, urls, strict=True)):
            args = ["--config", str(config), "--cache-dir", str(tmp_path / f"n{i}")]
            args += ["--self", url, "--peer-secret-file", str(secret)]
            for peer in urls:
                args += ["--peer", peer]
            nodes.append(
                await stack.enter_async_context(
                    serve_process(*args, port=port, log=tmp_path / f"n{i}.log")
                )
            )
        yield nodes


async def test_the_rule_holds_across_the_cluster(upstreams: Upstreams, tmp_path: Path) -> None:
    secret = await push_private(upstreams, f"team/peer-{uuid.uuid4().hex[:6]}")
    public_repo = f"lib/app-{uuid.uuid4().hex[:6]}"
    await push_image(upstreams.public.url, public_repo, "v1", layer_sizes=(2000,))
    config = write_config(tmp_path, upstreams)
    async with cluster(tmp_path, config, 2) as nodes, aiohttp.ClientSession() as http:
        (_, first), (_, second) = nodes
        await alice_pulls(first, secret)
        for blob in secret.blobs:
            for node in (first, second):
                target = f"{node}/v2/{PUBLIC}/{public_repo}/blobs/{blob.digest}"
                assert await answer(http, "GET", target) == (404, "BLOB_UNKNOWN")
            # A signed peer request naming the public repository: the serving node
            # applies the same rule.
            # So do the swarm's: a holder list (the blob's size, who has it) and a piece.
            pair = {"repo": public_repo, "upstream": PUBLIC}
            asks = [
                ("blobs", pair),
                ("pieces", {**pair, "node": second}),
                ("holding", {**pair, "node": second, "have": "", "coming": ""}),
                # A node that says it has the blob whole: no fetch asks the upstream.
                (
                    "holding",
                    {
                        **pair,
                        "node": second,
                        "have": f"0-{blob.size}",
                        "coming": "",
                        "size": str(blob.size),
                    },
                ),
            ]
            for node in (first, second):
                for kind, fields in asks:
                    path = f"/_cacheproxy/peer/{kind}/{blob.digest}"
                    query = urlencode(sorted(fields.items()))
                    signed = {HEADER: sign(SECRET, "GET", f"{path}?{query}", node)}
                    async with http.get(f"{node}{path}?{query}", headers=signed) as resp:
                        assert resp.status == 404, (kind, node, await resp.text())
        # alice gets the whole image from the other node as well.
        await alice_pulls(second, secret)


async def test_an_unsigned_tag_answer_from_a_fake_peer_is_not_believed(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    """A fake peer that never knew the secret answers a node's tag lookup with the
    attacker's image; the node resolves the tag itself and never keeps the lie."""
    name = f"lib/victim-{uuid.uuid4().hex[:6]}"
    real = await push_image(upstreams.public.url, name, "v1", layer_sizes=(1500,), seed="real")
    evil = await push_image(upstreams.public.url, f"{name}-evil", "v1", layer_sizes=(1500,))
    fake_port, node_port = free_port(), free_port()
    fake_url, node_url = f"http://127.0.0.1:{fake_port}", f"http://127.0.0.1:{node_port}"
    tag_key = f"tag:{PUBLIC}/{name}:v1"
    if ranked(tag_key, [fake_url, node_url])[0] != fake_url:
        # The fake must own the tag's key: swap the two addresses.
        fake_port, node_port = node_port, fake_port
        fake_url, node_url = node_url, fake_url
    asked = 0

    async def lie(request: web.Request) -> web.StreamResponse:
        nonlocal asked
        asked += 1
        if "/manifests/" in request.path:
            return web.Response(
                body=evil.manifest,
                headers={
                    "Docker-Content-Digest": evil.digest,
                    "Content-Type": evil.media_type,
                    # A signature made up without the secret.
                    "X-Cacheproxy-Peer-Answer": "1.deadbeef",
                },
            )
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", lie)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", fake_port).start()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    config = write_config(tmp_path, upstreams)
    try:
        async with (
            running_proxy(
                None,
                tmp_path / "node",
                config_file=config,
                port=node_port,
                peers=(fake_url, node_url),
                self_url=node_url,
                peer_secret_file=secret,
            ) as node,
            aiohttp.ClientSession() as http,
        ):
            url = f"{node.url}/v2/{PUBLIC}/{name}/manifests/v1"
            async with http.get(url, headers=ACCEPT) as resp:
                assert resp.status == 200
                assert resp.headers["Docker-Content-Digest"] == real.digest
                assert await resp.read() == real.manifest
            assert asked >= 1
            assert node.cluster is not None
            assert node.cluster.membership.health()[fake_url] == "avoided"
            # Nor is the lie kept: the cached tag names the real image.
            async with http.get(url, headers=ACCEPT) as resp:
                assert resp.headers["Docker-Content-Digest"] == real.digest
    finally:
        await runner.cleanup()


async def test_a_fake_peers_content_type_never_sets_a_digests_media_type(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    """A fake peer that never knew the secret answers a by-digest manifest with the
    right bytes and the wrong Content-Type: the bytes are used (they match the
    digest), the type is theirs, also after a restart on the same cache; and a real
    node signs the type of its own digest answers."""
    name = f"lib/typed-{uuid.uuid4().hex[:6]}"
    image = await push_image(upstreams.public.url, name, "v1", layer_sizes=(1500,))
    assert image.media_type == OCI_MANIFEST
    fake_port, node_port = free_port(), free_port()
    fake_url, node_url = f"http://127.0.0.1:{fake_port}", f"http://127.0.0.1:{node_port}"
    if ranked(image.digest, [fake_url, node_url])[0] != fake_url:
        # The fake must own the digest's key: swap the two addresses.
        fake_port, node_port = node_port, fake_port
        fake_url, node_url = node_url, fake_url
    asked = 0

    async def wrong_type(request: web.Request) -> web.StreamResponse:
        nonlocal asked
        if request.path.endswith(f"/manifests/{image.digest}"):
            asked += 1
            headers = {"Docker-Content-Digest": image.digest, "Content-Type": OCI_INDEX}
            headers["X-Cacheproxy-Peer-Answer"] = "1.deadbeef"
            return web.Response(body=image.manifest, headers=headers)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", wrong_type)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", fake_port).start()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    config = write_config(tmp_path, upstreams)
    peers = {"peers": (fake_url, node_url), "self_url": node_url, "peer_secret_file": secret}
    only_images = {"Accept": OCI_MANIFEST}
    url = f"/v2/{PUBLIC}/{name}/manifests/{image.digest}"
    try:
        for run in range(2):  # the second on the same cache, after a restart
            async with (
                running_proxy(
                    None, tmp_path / "node", config_file=config, port=node_port, **peers
                ) as node,
                aiohttp.ClientSession() as http,
            ):
                for accept in (ACCEPT, only_images):
                    async with http.get(node.url + url, headers=accept) as resp:
                        assert resp.status == 200, (run, await resp.text())
                        assert resp.headers["Content-Type"] == OCI_MANIFEST
                        assert await resp.read() == image.manifest
                assert asked == 1  # the fake was asked, once: its bytes are the cache's
                # A real node's answer by digest carries its signature over the type.
                query = urlencode(sorted({"repo": name, "upstream": PUBLIC}.items()))
                path_qs = f"/_cacheproxy/peer/manifests/{image.digest}?{query}"
                signature = sign(SECRET, "GET", path_qs, node_url)
                async with http.get(node.url + path_qs, headers={HEADER: signature}) as resp:
                    assert resp.status == 200
                    fields = [PUBLIC, name, image.digest, image.digest, OCI_MANIFEST]
                    assert resp.headers["Content-Type"] == OCI_MANIFEST
                    assert verify_answer(SECRET, signature, fields, resp.headers[ANSWER_HEADER])
    finally:
        await runner.cleanup()


# --- what a deployment exposes ---------------------------------------------------------


async def test_serve_refuses_to_hand_its_logins_to_the_network(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    config = (
        write_config(tmp_path, upstreams)
        .read_text()
        .replace("anonymous = true", "anonymous = true\n")
    )
    (tmp_path / "open.toml").write_text(config)
    argv = [sys.executable, "-m", "cacheproxy", "serve", "--config", str(tmp_path / "open.toml")]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--listen", f"0.0.0.0:{free_port()}"]
    refused = await run_process(*argv, timeout=60)
    assert refused.returncode == 2
    lines = [ln for ln in refused.stderr.splitlines() if "refusing to listen" in ln]
    assert len(lines) == 1 and PRIVATE in lines[0] and "expose_credentials" in lines[0]
    # Said explicitly, it serves (a central mirror on a trusted network).
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("expose_credentials = true\n" + config)
    port = free_port()
    args = ["--config", str(explicit), "--cache-dir", str(tmp_path / "cache2")]
    args += ["--listen", f"0.0.0.0:{port}"]
    async with (
        serve_process(*args, port=port, log=tmp_path / "explicit.log") as (_, url),
        aiohttp.ClientSession() as http,
        http.get(url + "/v2/") as resp,
    ):
        assert resp.status == 200


async def test_peers_on_a_listener_of_their_own(upstreams: Upstreams, tmp_path: Path) -> None:
    """Clients on loopback, peers on the peer listener: the registry API is not on the
    peer listener, the peer path is not on the client listener, and blobs still
    travel between nodes."""
    image = await push_image(
        upstreams.public.url, f"lib/pl-{uuid.uuid4().hex[:6]}", "v1", layer_sizes=(300_000,) * 3
    )
    config = write_config(tmp_path, upstreams)
    secret = tmp_path / "peer-secret"
    secret.write_bytes(SECRET)
    ports = [free_port() for _ in range(2)]
    peer_ports = [free_port() for _ in range(2)]
    peer_urls = [f"http://127.0.0.1:{p}" for p in peer_ports]
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        nodes = []
        for i, (port, peer_url) in enumerate(zip(ports, peer_urls, strict=True)):
            args = ["--config", str(config), "--cache-dir", str(tmp_path / f"n{i}")]
            args += ["--self", peer_url, "--peer-secret-file", str(secret)]
            args += ["--peer-listen", peer_url.removeprefix("http://")]
            for peer in peer_urls:
                args += ["--peer", peer]
            _, url = await stack.enter_async_context(
                serve_process(*args, port=port, log=tmp_path / f"n{i}.log")
            )
            nodes.append(url)
        for peer_url in peer_urls:
            for path in ("/healthz", "/readyz"):
                async with http.get(peer_url + path) as resp:
                    assert resp.status == 200
            target = f"{peer_url}/v2/{PUBLIC}/{image.name}/manifests/v1"
            assert (await answer(http, "GET", target))[0] == 404
        blob = image.layers[0].digest
        peer_path = f"/_cacheproxy/peer/blobs/{blob}?repo=x&upstream={PUBLIC}"
        assert (await answer(http, "GET", nodes[0] + peer_path))[0] == 404
        for node in nodes:
            base = f"{node}/v2/{PUBLIC}/{image.name}"
            async with http.get(f"{base}/manifests/v1", headers=ACCEPT) as resp:
                assert await resp.read() == image.manifest
            for desc in image.blobs:
                async with http.get(f"{base}/blobs/{desc.digest}") as resp:
                    data = await resp.read()
                assert "sha256:" + hashlib.sha256(data).hexdigest() == desc.digest
        # Each layer left the upstream once: the second node got it from its owner.
        for desc in image.layers:
            assert upstreams.public.count("GET", f"/blobs/{desc.digest}") == 1
        # And a pull's own blobs, named by the manifest it pulled, cost no confirmation
        # on either node (a hint spares the one asked before a peer: test_metrics).
        assert upstreams.public.count("HEAD", "/blobs/") == 0, [
            r for r in upstreams.public.requests if r[0] == "HEAD"
        ]


async def test_a_fill_joined_after_waiting_for_a_slot_is_still_vouched_for(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    """The queue for a download slot must not launder a digest across repositories:
    alice's request and an anonymous one under a public repository wait for the one
    slot; alice's fill starts first; the other, joining it later, is confirmed first.

    An unlinked pair is confirmed before it waits at all unless a manifest served
    under it named the digest: here one does, as a lax registry would let it (the
    forwarder answers a public tag with a manifest naming the private layer), so the
    anonymous request waits in the queue like a pull's own blob."""
    secret = await push_private(upstreams, f"team/q-{uuid.uuid4().hex[:6]}", (200_000,))
    layer = secret.layers[0].digest
    public_repo = f"lib/app-{uuid.uuid4().hex[:6]}"
    await push_image(upstreams.public.url, public_repo, "v1", layer_sizes=(2000,))
    other = await push_image(upstreams.public.url, public_repo, "v2", layer_sizes=(300_000,))
    naming = json.loads(other.manifest)
    naming["layers"].append(
        {"mediaType": secret.layers[0].media_type, "digest": layer, "size": secret.layers[0].size}
    )
    lax = json.dumps(naming).encode()
    digest = "sha256:" + hashlib.sha256(lax).hexdigest()
    upstreams.public.set_fault(
        Fault(
            match=f"/v2/{public_repo}/manifests/lax",
            kind="status",
            status=200,
            headers={"Content-Type": other.media_type, "Docker-Content-Digest": digest},
            body=lax,
        )
    )
    config = write_config(tmp_path, upstreams)
    stall = upstreams.public.set_fault(
        Fault(match=other.layers[0].digest, kind="stall", offset=1000)
    )
    # The holder is a client of its own: one that runs the only slot while another
    # waits may not ask for more (its share shrinks).
    elsewhere = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config, max_fills=1) as proxy,
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=elsewhere) as other_client,
    ):
        manifest = f"{proxy.url}/v2/{PUBLIC}/{public_repo}/manifests/lax"
        async with http.get(manifest, headers=ACCEPT) as resp:
            assert resp.status == 200, await resp.text()
        base = f"{proxy.url}/v2/{PUBLIC}/{public_repo}/blobs"
        # The one slot is taken by a stalled fill.
        holder = asyncio.create_task(other_client.get(f"{base}/{other.layers[0].digest}"))
        await eventually(lambda: proxy.fills.active, timeout=20, what="the stalled fill")

        async def alice() -> int:
            url = f"{proxy.url}/v2/{PRIVATE}/{secret.name}/blobs/{layer}"
            async with http.get(url, headers=basic_auth(*ALICE)) as resp:
                await resp.read()
                return resp.status

        async def anonymous() -> int:
            async with http.get(f"{base}/{layer}") as resp:
                await resp.read()
                return resp.status

        first = asyncio.create_task(alice())
        await eventually(lambda: proxy.fills.gate.waiting >= 1, timeout=20, what="alice queued")
        second = asyncio.create_task(anonymous())
        await eventually(
            lambda: proxy.fills.gate.waiting >= 2, timeout=20, what="the anonymous client queued"
        )
        stall.release()
        upstreams.public.clear_faults()
        async with asyncio.timeout(30):
            assert await first == 200
            assert await second == 404
        (await holder).close()


async def test_a_refusal_says_nothing_of_what_is_cached(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    """Asked under a repository that may not have it, a digest this node holds and one
    it never saw get the same answer (the upstream's own), for GET and HEAD, and again
    when asked twice: no oracle for what the cache holds."""
    public_repo = f"lib/app-{uuid.uuid4().hex[:6]}"
    image = await push_image(upstreams.public.url, public_repo, "v1", layer_sizes=(4000,))
    never = await push_image(upstreams.public.url, f"{public_repo}-x", "v1", layer_sizes=(4000,))
    # The private registry once more, named without the proxy holding its login.
    config = write_config(tmp_path, upstreams).read_text() + (
        f'[[upstream]]\nname = "locked.test"\nurl = "{upstreams.private.url}"\n'
    )
    config_file = tmp_path / "locked.toml"
    config_file.write_text(
        config.replace(f'allow = ["{PUBLIC}/*"]', f'allow = ["{PUBLIC}/*", "locked.test/*"]')
    )
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config_file) as proxy,
        aiohttp.ClientSession() as http,
    ):
        held = image.layers[0].digest
        async with http.get(f"{proxy.url}/v2/{PUBLIC}/{public_repo}/blobs/{held}") as resp:
            assert resp.status == 200
            await resp.read()
        await eventually(
            lambda: proxy.blob_path(held).exists(), timeout=10, what="the layer in the cache"
        )
        unseen = never.layers[0].digest
        for where in (f"{PUBLIC}/lib/nothing-here", "locked.test/team/x"):
            answers = {}
            for digest in (held, unseen):
                for _ in range(2):
                    for method in ("GET", "HEAD"):
                        url = f"{proxy.url}/v2/{where}/blobs/{digest}"
                        got = await answer(http, method, url)
                        answers.setdefault((method, digest == held), set()).add(got)
            for method in ("GET", "HEAD"):
                assert answers[(method, True)] == answers[(method, False)], (where, answers)
                assert len(answers[(method, True)]) == 1
