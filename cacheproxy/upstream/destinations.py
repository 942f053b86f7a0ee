"""Where an upstream's requests may go, and which of them may carry its login.

Credentials go to a token realm only on the upstream's own site: the same scheme
or better (https stays https), and the same registrable domain by the Public
Suffix List, so ``evil.co.uk`` is not ``registry.co.uk``'s site. The list is the
snapshot bundled with the ``publicsuffixlist`` package; it is never fetched at run
time (an air-gapped node works). A registry reached by IP address, or by a name
with no registrable domain (``localhost``), shares its site with that host and
port only. Registry services that give each customer a host under one domain the
list does not name (``<tenant>.azurecr.io``) are one site per host.

Requests (redirects, token realms) never go to loopback, link-local (cloud
metadata, 169.254.169.254) or unspecified addresses unless the upstream itself is
on such an address: a registry must not be able to point the proxy at services
only the proxy's host can reach. Nor to the operator's deny list (``egress.py``:
a cluster's pod and service ranges, the node's own addresses). Names are checked
where they are resolved (:class:`GuardedResolver`), so a DNS name cannot bypass
the rule. The upstream's own host (its name, or its address) is never refused:
the operator named it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from publicsuffixlist import PublicSuffixList

from .egress import EgressDeny

log = logging.getLogger(__name__)

# Multi-tenant registry domains the Public Suffix List does not list: every host
# under them belongs to another customer.
TENANT_SUFFIXES = (
    "azurecr.io",
    "azurecr.cn",
    "azurecr.us",
    "amazonaws.com",
    "pkg.dev",
    "jfrog.io",
)
# AWS's instance metadata over IPv6 (a unique-local address, not link-local).
METADATA = frozenset({ipaddress.ip_address("fd00:ec2::254")})
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.cache
def _suffixes() -> PublicSuffixList:
    # Without a source, the snapshot shipped inside the package: no network, ever.
    return PublicSuffixList()


def ip_of(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one (brackets and IPv4-mapped forms too)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def registrable_domain(host: str) -> str | None:
    """The site a DNS name belongs to; None for an IP address or a name without one."""
    host = host.lower().rstrip(".")
    if not host or ip_of(host) is not None:
        return None
    for tenant in TENANT_SUFFIXES:
        if host.endswith("." + tenant):
            return host
    found = _suffixes().privatesuffix(host)
    return found or None


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None


def same_origin(url_a: str, url_b: str) -> bool:
    """Same scheme, host and port (RFC 6454): where an ``Authorization`` may follow."""
    a, b = urlsplit(url_a), urlsplit(url_b)
    return (
        a.scheme == b.scheme
        and (a.hostname or "") == (b.hostname or "")
        and _port(a) == _port(b)
        and _port(a) is not None
    )


def realm_gets_credentials(realm: str, registry: str) -> bool:
    """Whether the upstream's login may be sent to the token ``realm``."""
    r, g = urlsplit(realm), urlsplit(registry)
    if r.scheme not in DEFAULT_PORTS or not r.hostname or not g.hostname:
        return False
    if g.scheme == "https" and r.scheme != "https":
        return False
    site = registrable_domain(g.hostname)
    if site is None:
        return r.hostname == g.hostname and _port(r) == _port(g) and _port(r) is not None
    return registrable_domain(r.hostname) == site


def address_class(ip: IPAddress) -> str | None:
    """ "loopback", "link-local", "unspecified", or None for any other address."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local or ip in METADATA:
        return "link-local"
    return None


class RefusedAddress(OSError):
    """A name resolved only to addresses the proxy does not dial."""


class Destinations:
    """Where an upstream's requests may go: the address classes it may reach besides
    ordinary ones, less the operator's deny list."""

    def __init__(self, upstream_url: str, deny: EgressDeny | None = None) -> None:
        host = (urlsplit(upstream_url).hostname or "").lower()
        self.host = host
        ip = ip_of(host)
        # The upstream's own address is never denied: the operator named it (a
        # registry on 10.0.0.5 under a deny list of 10/8 still works, redirects to
        # its own address included).
        self.own_ip = ip
        own = address_class(ip) if ip is not None else None
        if host == "localhost" or host.endswith(".localhost"):
            own = "loopback"
        self.allowed = frozenset({own} if own else ())
        self.deny = deny or EgressDeny()

    def address_allowed(self, ip: IPAddress) -> bool:
        if ip == self.own_ip:
            return True
        kind = address_class(ip)
        return (kind is None or kind in self.allowed) and not self.deny.denies(ip)

    def url_allowed(self, url: str) -> bool:
        """False for a URL whose host is a literal address the upstream may not send
        the proxy to (names are checked when resolved)."""
        ip = ip_of(urlsplit(url).hostname or "")
        return ip is None or self.address_allowed(ip)


class GuardedResolver(AbstractResolver):
    """DNS for one upstream's session: names other than the upstream's own never
    resolve to an address class :class:`Destinations` forbids."""

    def __init__(self, destinations: Destinations, inner: AbstractResolver | None = None) -> None:
        self._destinations = destinations
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if host.lower().rstrip(".") == self._destinations.host:
            return found
        kept = [r for r in found if self._allowed(r["host"])]
        if not kept:
            log.warning("refusing to connect to %s: it resolves to a forbidden address", host)
            raise RefusedAddress(f"{host} resolves only to addresses the proxy does not dial")
        return kept

    def _allowed(self, address: str) -> bool:
        ip = ip_of(address.partition("%")[0])
        return ip is None or self._destinations.address_allowed(ip)

    async def close(self) -> None:
        await self._inner.close()
