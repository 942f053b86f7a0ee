"""Client authentication, allow/deny rules, TLS with certificate reload, header deadline."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.support.clients import skopeo
from tests.support.forwarder import Forwarder
from tests.support.images import basic_auth, push_image
from tests.support.names import unique
from tests.support.proxy import running_proxy
from tests.support.registry import write_htpasswd
from tests.support.tls import self_signed
from tests.support.waiting import eventually

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


async def status(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as resp:
        body = await resp.read()
        if resp.status >= 400:
            assert resp.headers["Content-Type"].startswith("application/json"), body
        return resp.status, dict(resp.headers)


async def test_htpasswd_tokens_and_rules(forwarder: Forwarder, tmp_path: Path) -> None:
    team = unique("team")
    public = unique("public")
    secret_repo = unique("team/secret")
    for repo in (team, public, secret_repo):
        await push_image(forwarder.url, repo, "v1", layer_sizes=(1000,))
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, "ci", "ci-password-1")
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-0123456789abcdef builder\n")
    up = forwarder.host
    config = tmp_path / "c.toml"
    config.write_text(
        f'[auth]\nhtpasswd = "{htpasswd}"\ntokens_file = "{tokens}"\nanonymous = true\n'
        f'[[access]]\nsubjects = ["ci", "builder"]\nallow = ["{up}/team/*"]\n'
        f'deny = ["{up}/team/secret/*"]\n'
        f'[[access]]\nsubjects = ["anonymous"]\nallow = ["{up}/public/*"]\n'
    )
    async with running_proxy(forwarder.url, tmp_path / "cache", config_file=config) as proxy:

        def url(repo: str) -> str:
            return f"{proxy.url}/v2/{repo}/manifests/v1"

        assert (await status(url(public), ACCEPT))[0] == 200
        code, headers = await status(url(team), ACCEPT)
        assert code == 401  # anonymous may not: log in (a challenge, so clients do)
        assert headers["WWW-Authenticate"].startswith("Basic")
        assert (await status(url(team), {**ACCEPT, **basic_auth("ci", "ci-password-1")}))[0] == 200
        bearer = {"Authorization": "Bearer tok-0123456789abcdef"}
        assert (await status(url(team), {**ACCEPT, **bearer}))[0] == 200
        code, headers = await status(url(team), {**ACCEPT, **basic_auth("ci", "wrong")})
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        bad_bearer = {"Authorization": "Bearer nope"}
        assert (await status(url(team), {**ACCEPT, **bad_bearer}))[0] == 401
        denied = {**ACCEPT, **basic_auth("ci", "ci-password-1")}
        assert (await status(url(secret_repo), denied))[0] == 403
        # Probes and metrics stay open for the kubelet and Prometheus.
        assert (await status(f"{proxy.url}/healthz"))[0] == 200


async def test_anonymous_off_challenges_at_the_base_endpoint(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("private")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(1000,))
    pushed = len(forwarder.requests)
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, "u", "p4ssword")
    config = tmp_path / "c.toml"
    config.write_text(f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = false\n')
    async with running_proxy(forwarder.url, tmp_path / "cache", config_file=config) as proxy:
        code, headers = await status(f"{proxy.url}/v2/")
        assert code == 401
        assert 'realm="cacheproxy"' in headers["WWW-Authenticate"]
        code, _ = await status(f"{proxy.url}/v2/{name}/manifests/v1", ACCEPT)
        assert code == 401
        assert len(forwarder.requests) == pushed  # nothing went upstream for them
        assert (await status(f"{proxy.url}/v2/", basic_auth("u", "p4ssword")))[0] == 200
        # A real client logs in when challenged.
        out = tmp_path / "out"
        ref = f"docker://{proxy.host}/{name}:v1"
        result = await skopeo(
            "copy", "--src-tls-verify=false", "--src-creds", "u:p4ssword", ref, f"dir:{out}"
        )
        result.check()
        assert (out / "manifest.json").read_bytes() == image.manifest


async def served_cert_name(host: str, port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def test_tls_listener_reloads_a_renewed_certificate(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("tls")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(1000,))
    cert, key = self_signed(tmp_path, "first-cert")
    async with running_proxy(
        forwarder.url, tmp_path / "cache", tls_cert=cert, tls_key=key, tls_reload=0.2
    ) as proxy:
        host, port = proxy.host.rsplit(":", 1)
        assert await served_cert_name(host, int(port)) == "first-cert"
        out = tmp_path / "out"
        ref = f"docker://{proxy.host}/{name}:v1"
        (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{out}")).check()
        assert (out / "manifest.json").read_bytes() == image.manifest
        self_signed(tmp_path, "renewed-cert")

        async def renewed() -> bool:
            return await served_cert_name(host, int(port)) == "renewed-cert"

        await eventually(renewed, timeout=10, interval=0.1, what="the renewed certificate served")


@pytest.mark.parametrize("partial", [b"", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: "])
async def test_slow_loris_is_cut_off(partial: bytes, forwarder: Forwarder, tmp_path: Path) -> None:
    async with running_proxy(forwarder.url, tmp_path / "cache", client_header_timeout=0.5) as proxy:
        host, port = proxy.host.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(partial)
            await writer.drain()
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed by the server
        finally:
            writer.close()
            await writer.wait_closed()
        assert (await status(f"{proxy.url}/v2/"))[0] == 200
