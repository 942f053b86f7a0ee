"""Upstream auth against a real token-auth registry, and redirects that drop credentials."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.clients import skopeo
from tests.support.images import push_blob, push_image
from tests.support.names import unique
from tests.support.ports import free_port
from tests.support.proxy import running_proxy
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import TokenServer


def push_headers(server: TokenServer, name: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + server.issue(f"repository:{name}:pull,push")}


async def test_anonymous_bearer_flow_one_token_per_scope(
    token_server: TokenServer, token_registry: RegistryProcess, tmp_path: Path
) -> None:
    name = unique("auth")
    image = await push_image(
        token_registry.url,
        name,
        "v1",
        layer_sizes=(100_000, 200_000),
        headers=push_headers(token_server, name),
    )
    async with running_proxy(token_registry.url, tmp_path / "cache") as proxy:
        out = tmp_path / "out"
        ref = f"docker://{proxy.host}/{name}:v1"
        (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{out}")).check()
        assert (out / "manifest.json").read_bytes() == image.manifest
        # Manifest and every blob share one scope: one token for the whole pull.
        scopes = [r.scope for r in token_server.requests]
        assert scopes == [f"repository:{name}:pull"]
        assert all(r.authorization is None for r in token_server.requests)
        assert proxy.upstreams.get().tokens.fetches == 1


async def test_expired_token_is_refreshed_without_client_error(
    token_server: TokenServer, token_registry: RegistryProcess, tmp_path: Path
) -> None:
    name = unique("auth")
    digest = await push_blob(
        token_registry.url, name, b"x" * 100_000, headers=push_headers(token_server, name)
    )
    clock = [0.0]
    # The test controls the upstream client's time: the token cache's and the one
    # that stamps each token's expiry.
    async with running_proxy(
        token_registry.url, tmp_path / "cache", upstream_clock=lambda: clock[0]
    ) as proxy:
        up = proxy.upstreams.get()
        async with aiohttp.ClientSession() as http:
            async with http.head(f"{proxy.url}/v2/{name}/blobs/{digest}") as resp:
                assert resp.status == 200
            assert up.tokens.fetches == 1
            # Past the token's lifetime: the cache refreshes before using it.
            clock[0] += 3600
            async with http.get(f"{proxy.url}/v2/{name}/blobs/{digest}") as resp:
                assert resp.status == 200
                assert await resp.read() == b"x" * 100_000
            assert up.tokens.fetches == 2


async def test_credentials_never_follow_a_redirect_to_another_host(tmp_path: Path) -> None:
    """An upstream with Basic auth that redirects blobs to object storage elsewhere."""
    data = b"layer bytes " * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    user, password = "robot", "s3cret-value"
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    seen_by_storage: list[dict[str, str]] = []
    seen_by_registry: list[str | None] = []
    storage_port = free_port("127.0.0.2")

    async def registry_handler(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        seen_by_registry.append(auth)
        if auth != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        target = f"http://127.0.0.2:{storage_port}/bucket/{digest}?sig=abc"
        return web.Response(status=307, headers={"Location": target})

    async def storage_handler(request: web.Request) -> web.StreamResponse:
        seen_by_storage.append(dict(request.headers))
        return web.Response(body=data, content_type="application/octet-stream")

    reg_app, store_app = web.Application(), web.Application()
    reg_app.router.add_route("*", "/{tail:.*}", registry_handler)
    store_app.router.add_route("*", "/{tail:.*}", storage_handler)
    runners = [web.AppRunner(reg_app), web.AppRunner(store_app)]
    reg_port = free_port("127.0.0.1")
    for runner, (host, port) in zip(
        runners, [("127.0.0.1", reg_port), ("127.0.0.2", storage_port)], strict=True
    ):
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
    try:
        config = tmp_path / "c.toml"
        config.write_text(
            f'presets = []\n[[upstream]]\nurl = "http://127.0.0.1:{reg_port}"\n'
            f'username = "{user}"\npassword = "{password}"\n'
        )
        async with (
            running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
            aiohttp.ClientSession() as http,
            http.get(f"{proxy.url}/v2/app/blobs/{digest}") as resp,
        ):
            assert resp.status == 200
            assert await resp.read() == data
    finally:
        for runner in runners:
            await runner.cleanup()
    assert expected in seen_by_registry
    assert len(seen_by_storage) == 1
    assert "Authorization" not in seen_by_storage[0]
    assert password not in repr(seen_by_storage)
