"""Where upstream requests may go, and which may carry the upstream's login."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from cacheproxy.upstream.destinations import (
    Destinations,
    GuardedResolver,
    address_class,
    realm_gets_credentials,
    registrable_domain,
    same_origin,
)


@pytest.mark.parametrize(
    ("realm", "registry"),
    [
        ("https://auth.docker.io/token", "https://registry-1.docker.io"),
        ("https://ghcr.io/token", "https://ghcr.io"),
        ("https://auth.registry.co.uk/token", "https://registry.co.uk"),
        ("https://myreg.azurecr.io/oauth2/token", "https://myreg.azurecr.io"),
        ("http://127.0.0.1:5000/token", "http://127.0.0.1:5000"),
        ("https://127.0.0.1:5000/token", "http://127.0.0.1:5000"),  # an upgrade is fine
        ("http://localhost:5000/auth", "http://localhost:5000"),
        ("https://[::1]:5000/token", "https://[::1]:5000"),
        ("https://auth.docker.io:443/token", "https://registry-1.docker.io"),
    ],
)
def test_realms_that_get_credentials(realm: str, registry: str) -> None:
    assert realm_gets_credentials(realm, registry)


@pytest.mark.parametrize(
    ("realm", "registry"),
    [
        ("https://evil.example/token", "https://registry-1.docker.io"),
        ("https://evil.co.uk/token", "https://registry.co.uk"),  # a public suffix
        ("https://other.azurecr.io/oauth2/token", "https://myreg.azurecr.io"),  # a tenant
        ("https://x.github.io/token", "https://y.github.io"),  # the list's private part
        ("http://auth.docker.io/token", "https://registry-1.docker.io"),  # clear text
        ("http://127.0.0.1:9000/token", "http://127.0.0.1:5000"),  # another port
        ("http://127.0.0.2:5000/token", "http://127.0.0.1:5000"),
        ("http://localhost:9000/token", "http://localhost:5000"),
        ("http://127.0.0.1:5000/token", "http://localhost:5000"),
        ("ftp://auth.docker.io/token", "https://registry-1.docker.io"),
        ("", "https://registry-1.docker.io"),
    ],
)
def test_realms_that_do_not(realm: str, registry: str) -> None:
    assert not realm_gets_credentials(realm, registry)


def test_registrable_domains_come_from_the_bundled_list() -> None:
    assert registrable_domain("Registry-1.Docker.IO.") == "docker.io"
    assert registrable_domain("a.b.registry.co.uk") == "registry.co.uk"
    assert registrable_domain("123456789012.dkr.ecr.us-west-2.amazonaws.com") == (
        "123456789012.dkr.ecr.us-west-2.amazonaws.com"
    )
    assert registrable_domain("127.0.0.1") is None
    assert registrable_domain("localhost") is None


def test_same_origin_is_scheme_host_and_port() -> None:
    assert same_origin("https://r.example/v2/x", "https://r.example:443/v2/")
    assert not same_origin("http://r.example/blob", "https://r.example/v2/")
    assert not same_origin("https://r.example:8443/", "https://r.example/")
    assert not same_origin("https://cdn.example/", "https://r.example/")


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.0.0.5", None),
        ("52.94.1.1", None),
    ],
)
def test_address_classes(address: str, kind: str | None) -> None:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    assert address_class(ip) == kind


def test_an_upstream_may_send_the_proxy_only_where_it_is_itself() -> None:
    public = Destinations("https://registry.example.com")
    assert public.url_allowed("https://s3.amazonaws.com/bucket/x")
    assert public.url_allowed("http://10.1.2.3/x")
    for url in ("http://169.254.169.254/", "http://127.0.0.1:8080/", "http://[fe80::1]/"):
        assert not public.url_allowed(url)
    local = Destinations("http://127.0.0.1:5000")
    assert local.url_allowed("http://127.0.0.2:9000/storage")
    assert not local.url_allowed("http://169.254.169.254/latest/meta-data/")
    assert not local.url_allowed("http://0.0.0.0:9000/")
    assert Destinations("http://localhost:5000").url_allowed("http://127.0.0.1:1/")


class _Fixed(AbstractResolver):
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        return None


async def test_names_that_resolve_to_forbidden_addresses_are_not_dialled() -> None:
    resolver = GuardedResolver(
        Destinations("https://registry.example.com"),
        _Fixed(
            {
                "registry.example.com": ["127.0.0.1"],  # the operator's own choice
                "metadata.evil.example": ["169.254.169.254"],
                "mixed.example": ["127.0.0.1", "52.94.1.1"],
            }
        ),
    )
    assert [r["host"] for r in await resolver.resolve("registry.example.com", 443)] == ["127.0.0.1"]
    assert [r["host"] for r in await resolver.resolve("mixed.example", 443)] == ["52.94.1.1"]
    with pytest.raises(OSError, match="resolves only to addresses"):
        await resolver.resolve("metadata.evil.example", 80)
