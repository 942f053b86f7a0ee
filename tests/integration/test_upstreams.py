"""Many upstreams in one proxy: routing, credentials, ECR tokens, token expiry, rate limits."""

from __future__ import annotations

import base64
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest

from cacheproxy.config import UpstreamConfig
from cacheproxy.upstream.credentials import EcrCredentials
from tests.support.clients import skopeo
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import PushedImage, basic_auth, push_image
from tests.support.names import unique
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import TokenServer

ACCEPT = {
    "Accept": ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )
}
ECR_HOST = "123456789012.dkr.ecr.us-west-2.amazonaws.com"
ECR_PASSWORD = "123456789012-auth-token"  # what moto's GetAuthorizationToken hands out


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as resp:
        return resp.status, await resp.read(), resp.headers


# --- routing ----------------------------------------------------------------------------


@pytest.fixture
async def two_upstreams(
    registry: RegistryProcess, fresh_registry: RegistryProcess, tmp_path: Path
) -> AsyncIterator[RunningProxy]:
    config = write_config(
        tmp_path / "c.toml",
        f'presets = []\ndefault_upstream = "reg-a.test"\n'
        f'[[upstream]]\nname = "reg-a.test"\nurl = "{registry.url}"\n'
        f'[[upstream]]\nname = "reg-b.test"\nurl = "{fresh_registry.url}"\n',
    )
    async with running_proxy(None, tmp_path / "cache", config_file=config) as proxy:
        yield proxy


async def test_routing_by_ns_path_prefix_and_default(
    two_upstreams: RunningProxy,
    registry: RegistryProcess,
    fresh_registry: RegistryProcess,
    tmp_path: Path,
) -> None:
    proxy = two_upstreams
    name = unique("route")
    # Same repository and tag on both registries, different images, one shared layer.
    image_a = await push_image(registry.url, name, "v1", layer_sizes=(4000, 3000), seed="a")
    image_b = await push_image(fresh_registry.url, name, "v1", layer_sizes=(4000,), seed="b")

    # Default upstream (Docker's registry-mirrors): no namespace at all.
    out_a = tmp_path / "a"
    ref = f"docker://{proxy.host}/{name}:v1"
    (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{out_a}")).check()
    assert (out_a / "manifest.json").read_bytes() == image_a.manifest

    # CRI-O / podman: the registry host is the first path component.
    out_b = tmp_path / "b"
    ref = f"docker://{proxy.host}/reg-b.test/{name}:v1"
    (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{out_b}")).check()
    assert (out_b / "manifest.json").read_bytes() == image_b.manifest

    # containerd: ?ns=, echoed as OCI-Namespace; tags are kept per upstream.
    for ns, image in [("reg-a.test", image_a), ("reg-b.test", image_b)]:
        status, body, headers = await get(f"{proxy.url}/v2/{name}/manifests/v1?ns={ns}", ACCEPT)
        assert (status, body) == (200, image.manifest)
        assert headers["OCI-Namespace"] == ns
        for blob in image.all_blobs():
            status, data, _ = await get(f"{proxy.url}/v2/{name}/blobs/{blob.digest}?ns={ns}")
            assert status == 200 and data == image.blob_data[blob.digest]


async def tag(registry_url: str, name: str, image: PushedImage, tags: list[str]) -> None:
    """Put ``image``'s manifest under more ``tags`` of ``name``."""
    async with aiohttp.ClientSession() as http:
        for each in tags:
            url = f"{registry_url}/v2/{name}/manifests/{each}"
            headers = {"Content-Type": image.media_type}
            async with http.put(url, data=image.manifest, headers=headers) as resp:
                assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("how", ["prefix", "ns"])
async def test_tag_pages_stay_on_the_registry_the_request_named(
    how: str,
    two_upstreams: RunningProxy,
    registry: RegistryProcess,
    fresh_registry: RegistryProcess,
) -> None:
    """Paged through by path prefix or by ``ns``, every page of a repository on the
    second upstream comes from there, never from the default upstream, which holds
    the same repository name with tags of its own (anyone's)."""
    proxy = two_upstreams
    name = unique("pages")
    real = await push_image(fresh_registry.url, name, "t1", layer_sizes=(300,), seed="real")
    await tag(fresh_registry.url, name, real, ["t2", "t3", "t4", "t5"])
    planted = await push_image(registry.url, name, "t1", layer_sizes=(300,), seed="planted")
    await tag(registry.url, name, planted, ["t3", "t4b", "zz-planted"])
    first = (
        f"/v2/reg-b.test/{name}/tags/list?n=2"
        if how == "prefix"
        else f"/v2/{name}/tags/list?n=2&ns=reg-b.test"
    )
    seen: list[str] = []
    target: str | None = first
    for _ in range(10):
        if target is None:
            break
        status, body, headers = await get(proxy.url + target)
        assert status == 200, body
        page = json.loads(body)["tags"]
        assert len(page) <= 2
        seen += page
        link = headers.get("Link")
        if link is None:
            target = None
            continue
        assert link.endswith('; rel="next"')
        target = link[1 : link.index(">")]
        # This proxy's own path, naming the registry the way the request did.
        assert target.startswith("/v2/") and "://" not in target
        if how == "prefix":
            assert target.startswith(f"/v2/reg-b.test/{name}/tags/list?")
        else:
            assert target.startswith(f"/v2/{name}/tags/list?") and "ns=reg-b.test" in target
    assert target is None
    assert seen == ["t1", "t2", "t3", "t4", "t5"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/{name}/manifests/v1?ns=evil.example.com",
        "/v2/evil.example.com/{name}/manifests/v1",
        "/v2/{name}/blobs/sha256:" + "a" * 64 + "?ns=10.0.0.1:5000",
        "/v2/{name}/manifests/v1?ns=ghcr.io",  # a preset this config did not enable
    ],
)
async def test_unconfigured_registry_is_denied_without_dialling(
    path: str, two_upstreams: RunningProxy
) -> None:
    proxy = two_upstreams
    status, body, _ = await get(proxy.url + path.format(name=unique("deny")), ACCEPT)
    assert status == 403
    assert json.loads(body)["errors"][0]["code"] == "DENIED"
    assert {u.name for u in proxy.upstreams.all()} <= {"reg-a.test", "reg-b.test"}
    assert all(u.requests_sent == 0 for u in proxy.upstreams.all())


# --- static credentials --------------------------------------------------------------------


@pytest.fixture
def htpasswd_registry(require_binaries: None, tmp_path: Path) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path / "htreg", htpasswd=("robot", "hunter2-secret")) as reg:
        yield reg


@pytest.mark.parametrize("source", ["password_file", "password_env", "docker_config", "none"])
async def test_static_credentials(
    source: str,
    htpasswd_registry: RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "hunter2-secret"
    name = unique("creds")
    image = await push_image(
        htpasswd_registry.url, name, "v1", layer_sizes=(2000,), headers=basic_auth("robot", secret)
    )
    table = f'[[upstream]]\nname = "private.test"\nurl = "{htpasswd_registry.url}"\n'
    if source == "password_file":
        (tmp_path / "pw").write_text(secret + "\n")
        table += f'username = "robot"\npassword_file = "{tmp_path / "pw"}"\n'
    elif source == "password_env":
        monkeypatch.setenv("CACHEPROXY_TEST_PW", secret)
        table += 'username = "robot"\npassword_env = "CACHEPROXY_TEST_PW"\n'
    elif source == "docker_config":
        auth = base64.b64encode(f"robot:{secret}".encode()).decode()
        (tmp_path / "config.json").write_text(
            json.dumps({"auths": {"https://private.test": {"auth": auth}}})
        )
        table += f'docker_config = "{tmp_path / "config.json"}"\n'
    config = write_config(tmp_path / "c.toml", "presets = []\n" + table)
    async with running_proxy(None, tmp_path / "cache", config_file=config) as proxy:
        status, body, _ = await get(f"{proxy.url}/v2/{name}/manifests/v1", ACCEPT)
        if source == "none":
            assert status == 401
            assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
        else:
            assert (status, body) == (200, image.manifest)
            for blob in image.all_blobs():
                status, _, _ = await get(f"{proxy.url}/v2/{name}/blobs/{blob.digest}")
                assert status == 200
        assert secret.encode() not in body
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logged
    assert base64.b64encode(f"robot:{secret}".encode()).decode() not in logged


# --- ECR ---------------------------------------------------------------------------------


@pytest.fixture
def ecr_registry(require_binaries: None, tmp_path: Path) -> Iterator[RegistryProcess]:
    """A real registry that accepts the password moto's ECR hands out, for user AWS."""
    with RegistryProcess(tmp_path / "ecr", htpasswd=("AWS", ECR_PASSWORD)) as reg:
        yield reg


async def test_ecr_pull_with_one_token_call(
    aws: None, ecr_registry: RegistryProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    name = unique("ecr")
    image = await push_image(
        ecr_registry.url,
        name,
        "v1",
        layer_sizes=(3000, 3000, 3000),
        headers=basic_auth("AWS", ECR_PASSWORD),
    )
    config = write_config(
        tmp_path / "c.toml",
        f'[[upstream]]\nname = "{ECR_HOST}"\nurl = "{ecr_registry.url}"\necr = true\n',
    )
    async with running_proxy(None, tmp_path / "cache", config_file=config) as proxy:
        out = tmp_path / "out"
        ref = f"docker://{proxy.host}/{ECR_HOST}/{name}:v1"
        (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{out}")).check()
        assert (out / "manifest.json").read_bytes() == image.manifest
        creds = proxy.upstreams.get(ECR_HOST).credentials
        assert isinstance(creds, EcrCredentials)
        assert creds.calls == 1  # concurrent blob fetches shared one token call
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert ECR_PASSWORD not in logged
    assert base64.b64encode(f"AWS:{ECR_PASSWORD}".encode()).decode() not in logged


def shifted_expiry_client(clock: list[float]) -> Any:
    """A moto ECR client whose tokens expire 12 h after the test's clock."""

    class Client:
        def __init__(self) -> None:
            self._real = boto3.client("ecr", region_name="us-west-2")

        def get_authorization_token(self, **kwargs: Any) -> dict[str, Any]:
            answer = self._real.get_authorization_token(**kwargs)
            expires = datetime.datetime.fromtimestamp(clock[0] + 12 * 3600, datetime.UTC)
            for entry in answer["authorizationData"]:
                entry["expiresAt"] = expires
            return dict(answer)

    return Client()


async def test_ecr_token_refreshed_before_expiry(aws: None) -> None:
    clock = [1_000_000.0]
    creds = EcrCredentials(
        UpstreamConfig(ECR_HOST, "https://" + ECR_HOST, ecr=True, region="us-west-2"),
        client_factory=lambda _config: shifted_expiry_client(clock),
        clock=lambda: clock[0],
    )
    first = await creds.header()
    assert first == "Basic " + base64.b64encode(f"AWS:{ECR_PASSWORD}".encode()).decode()
    assert creds.calls == 1
    assert creds.expires_at == clock[0] + 12 * 3600
    clock[0] += 5 * 3600
    await creds.header()
    assert creds.calls == 1
    clock[0] += 3600 + 1  # past half-life, 6 h before expiry: refreshed now
    await creds.header()
    assert creds.calls == 2
    assert creds.refresh_at > clock[0]
    await creds.close()


async def test_ecr_past_expiry_does_not_refresh_in_a_hot_loop(aws: None) -> None:
    # moto's own answer says the token expired in 2015.
    clock = [2_000_000_000.0]
    creds = EcrCredentials(
        UpstreamConfig(ECR_HOST, "https://" + ECR_HOST, ecr=True, region="us-west-2"),
        clock=lambda: clock[0],
    )
    for _ in range(50):
        await creds.header()
    assert creds.calls == 1
    clock[0] += 61
    await creds.header()
    assert creds.calls == 2
    await creds.close()


async def test_ecr_expired_answer_is_recovered_transparently(
    aws: None, ecr_registry: RegistryProcess, tmp_path: Path
) -> None:
    name = unique("expired")
    image = await push_image(
        ecr_registry.url, name, "v1", layer_sizes=(1000,), headers=basic_auth("AWS", ECR_PASSWORD)
    )
    async with Forwarder(ecr_registry.url) as fwd:
        config = write_config(
            tmp_path / "c.toml",
            f'[[upstream]]\nname = "{ECR_HOST}"\nurl = "{fwd.url}"\necr = true\n',
        )
        expired = json.dumps(
            {
                "errors": [
                    {
                        "code": "DENIED",
                        "message": "Your authorization token has expired. "
                        "Reauthenticate and try again.",
                    }
                ]
            }
        ).encode()
        fwd.set_fault(
            Fault(
                match=f"/v2/{name}/manifests/v1", kind="status", status=403, body=expired, once=True
            )
        )
        async with running_proxy(None, tmp_path / "cache", config_file=config) as proxy:
            status, body, _ = await get(f"{proxy.url}/v2/{name}/manifests/v1?ns={ECR_HOST}", ACCEPT)
            assert (status, body) == (200, image.manifest)
            creds = proxy.upstreams.get(ECR_HOST).credentials
            assert isinstance(creds, EcrCredentials)
            assert creds.calls == 2
            assert fwd.count("GET", f"/v2/{name}/manifests/v1") == 2


# --- short-lived bearer tokens -----------------------------------------------------------


@pytest.mark.wallclock
async def test_pull_spanning_many_token_expiries(tmp_path: Path, require_binaries: None) -> None:
    async with TokenServer(tmp_path / "tokens", expires_in=2) as tokens:
        with RegistryProcess(tmp_path / "reg", token_auth=tokens.registry_auth()) as reg:
            name = unique("expiry")
            push = {"Authorization": "Bearer " + tokens.issue(f"repository:{name}:pull,push")}
            image = await push_image(reg.url, name, "v1", layer_sizes=[150_000] * 8, headers=push)
            tokens.requests.clear()
            async with (
                Forwarder(reg.url, throttle_bps=300_000) as fwd,
                running_proxy(fwd.url, tmp_path / "cache") as proxy,
            ):
                out = tmp_path / "out"
                ref = f"docker://{proxy.host}/{name}:v1"
                started = time.monotonic()
                (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{out}")).check()
                elapsed = time.monotonic() - started
                for blob in image.all_blobs():
                    stored = out / blob.digest.split(":")[1]
                    assert stored.read_bytes() == image.blob_data[blob.digest]
                fetches = proxy.upstreams.get().tokens.fetches
                upstream_requests = fwd.count("GET", f"/v2/{name}/")
    # The pull took several token lifetimes, so tokens were renewed along the way,
    # each once (not once per request), and no client request failed.
    assert elapsed > 2 * tokens.expires_in
    assert 2 <= len(tokens.requests) == fetches
    assert fetches < upstream_requests
    # At most one new token per refresh period (80% of the 2 s lifetime), plus one.
    assert fetches <= elapsed / (0.8 * tokens.expires_in) + 1


# --- rate limits ----------------------------------------------------------------------------


async def test_rate_limit_headers_stale_if_error_and_toomanyrequests(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("ratelimit")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(1000,))
    async with running_proxy(forwarder.url, tmp_path / "cache", tag_ttl=0) as proxy:
        url = f"{proxy.url}/v2/{name}/manifests/v1"
        assert (await get(url, ACCEPT))[1] == image.manifest
        forwarder.set_fault(
            Fault(
                match=f"/v2/{name}/",
                kind="status",
                status=429,
                headers={
                    "Retry-After": "42",
                    "ratelimit-limit": "100;w=21600",
                    "ratelimit-remaining": "0;w=21600",
                },
            )
        )
        # A cached tag is served stale instead of failing the pull.
        status, body, _ = await get(url, ACCEPT)
        assert (status, body) == (200, image.manifest)
        # An uncached one gets TOOMANYREQUESTS with the upstream's Retry-After.
        status, body, headers = await get(f"{proxy.url}/v2/{name}/manifests/v2", ACCEPT)
        assert status == 429
        assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert headers["Retry-After"] == "42"
        status, metrics, _ = await get(f"{proxy.url}/metrics")
        assert status == 200
        text = metrics.decode()
        assert "cacheproxy_upstream_ratelimit_limit{" in text
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("cacheproxy_upstream_ratelimit_remaining{")
        )
        assert 'window_seconds="21600"' in line and line.endswith(" 0.0")
