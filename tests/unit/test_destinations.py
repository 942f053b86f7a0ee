"""Where upstream requests may go, and which may carry the upstream's login."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from cacheproxy.config import ConfigError, load_config
from cacheproxy.upstream.destinations import (
    Destinations,
    GuardedResolver,
    RefusedAddress,
    address_class,
    realm_gets_credentials,
    registrable_domain,
    same_origin,
)
from cacheproxy.upstream.egress import egress_deny, local_ipv4, local_ipv6, read_node_networks


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


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 10.0.0.0/24 2 0 2
        |-- 10.0.0.0
           /24 link UNICAST
        |-- 10.0.0.7
           /32 host LOCAL
     |-- 10.96.0.10
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.0.0.7
        /32 host LOCAL
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
2a0100000000000000000000000000aa 04 40 00 80     eth0
not-an-address 04 40 00 80     eth0
"""


def test_the_nodes_own_addresses_come_from_proc() -> None:
    assert [str(n) for n in local_ipv4(FIB_TRIE)] == [
        "127.0.0.0/8",
        "127.0.0.1/32",
        "10.0.0.7/32",
        "10.96.0.10/32",  # a service IP kube-proxy's IPVS mode put on the node
    ]
    assert [str(n) for n in local_ipv6(IF_INET6)] == [
        "::1/128",
        "fe80::fc:ff:fe00:1/128",
        "2a01::aa/128",
    ]


def test_node_addresses_are_read_from_a_proc_directory(tmp_path: Path) -> None:
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_text(IF_INET6)
    deny = egress_deny(["node"], lambda: read_node_networks(tmp_path))
    assert deny.denies(ipaddress.ip_address("10.0.0.7"))
    assert deny.denies(ipaddress.ip_address("2a01::aa"))
    assert not deny.denies(ipaddress.ip_address("10.0.0.8"))
    with pytest.raises(ValueError, match="cannot read"):
        read_node_networks(tmp_path / "missing")


@pytest.mark.parametrize(
    ("entries", "denied", "allowed"),
    [
        ((), [], ["10.1.2.3", "192.168.1.1", "fd12::1"]),
        (
            ("10.96.0.0/12", "10.244.0.0/16"),  # a cluster's service and pod ranges
            ["10.96.0.1", "10.111.2.3", "10.244.9.9"],
            ["10.1.0.1"],
        ),
        (("192.168.1.7",), ["192.168.1.7", "::ffff:192.168.1.7"], ["192.168.1.8"]),
        (("10.244.1.7/16",), ["10.244.200.1"], ["10.245.0.1"]),  # its network, not strict
        (("fc00::/7",), ["fd12::1", "fc00::1"], ["2a01::1", "10.0.0.1"]),
        (("172.16.0.0/12",), ["172.31.255.255"], ["172.32.0.1"]),
    ],
)
def test_the_deny_list_refuses_its_ranges_and_nothing_else(
    entries: tuple[str, ...], denied: list[str], allowed: list[str]
) -> None:
    where = Destinations("https://registry.example.com", egress_deny(entries))

    def url(address: str) -> str:
        return f"http://[{address}]/x" if ":" in address else f"http://{address}/x"

    assert not [a for a in denied if where.url_allowed(url(a))]
    assert not [a for a in allowed if not where.url_allowed(url(a))]
    # The fixed classes stay refused whatever the list.
    assert not where.url_allowed("http://169.254.169.254/latest/meta-data/")


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "pods", "10.0.0.0/8 extra", "", "nodes"])
def test_entries_that_are_not_ranges_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="egress_deny"):
        egress_deny([entry])


def test_bad_entries_stop_the_configuration() -> None:
    with pytest.raises(ConfigError, match="egress_deny"):
        load_config(env={"CACHEPROXY_EGRESS_DENY": "10.96.0.0/12,pods"})
    config = load_config(env={"CACHEPROXY_EGRESS_DENY": "10.96.0.0/12, node"})
    assert config.egress_deny == ("10.96.0.0/12", "node")
    assert load_config(env={}).egress_deny == ()


def test_an_upstreams_own_address_is_never_denied() -> None:
    deny = egress_deny(["10.0.0.0/8"])
    own = Destinations("http://10.0.0.5:5000", deny)
    # Its own address on another port (its object store beside it) is the operator's
    # choice; its neighbours in the denied range are not.
    assert own.url_allowed("http://10.0.0.5:9000/bucket/blob")
    assert not own.url_allowed("http://10.0.0.6:9000/bucket/blob")
    assert not Destinations("https://registry.example.com", deny).url_allowed(
        "http://10.0.0.5:9000/"
    )


async def test_names_that_resolve_into_the_deny_list_are_not_dialled() -> None:
    resolver = GuardedResolver(
        Destinations("https://registry.internal", egress_deny(["10.96.0.0/12", "10.0.0.7"])),
        _Fixed(
            {
                "registry.internal": ["10.96.0.20"],  # the upstream's own name: its choice
                "kubernetes.default.svc.cluster.local": ["10.96.0.1"],
                "node.example": ["10.0.0.7"],
                "both.example": ["10.96.0.1", "10.0.0.8"],
                "store.example": ["10.0.0.8"],
            }
        ),
    )
    assert [r["host"] for r in await resolver.resolve("registry.internal", 443)] == ["10.96.0.20"]
    assert [r["host"] for r in await resolver.resolve("both.example", 443)] == ["10.0.0.8"]
    assert [r["host"] for r in await resolver.resolve("store.example", 443)] == ["10.0.0.8"]
    for name in ("kubernetes.default.svc.cluster.local", "node.example"):
        with pytest.raises(RefusedAddress, match="resolves only to addresses"):
            await resolver.resolve(name, 443)
