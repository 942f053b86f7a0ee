"""The operator's egress deny list (``egress_deny``): address ranges no upstream may
send the proxy to, on top of the address classes ``destinations.py`` always refuses.

Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) are allowed by default: a
registry, or the object store its blobs redirect to, is often on a private network
(an on-prem registry, a VPC endpoint, MinIO beside Harbor). But a cluster's pod and
service ranges and the node's own addresses are private too, and a registry that
redirects a blob GET there makes the proxy a client of services only the node can
reach. ``egress_deny`` names the ranges to refuse (``10.96.0.0/12``,
``10.244.0.0/16``), and the entry ``node`` adds every address of the node's own
interfaces, read at start from ``/proc/net`` (the node's, on the host network).

Pure but for :func:`read_node_networks`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..networks import IPAddress, IPNetwork, parse_entries

log = logging.getLogger(__name__)

PROC_NET = Path("/proc/net")
# /proc/net/fib_trie lists every local address, every service IP kube-proxy's IPVS
# mode puts on the node included: a few MB on a big cluster; more is not one.
MAX_PROC_BYTES = 16 * 1024 * 1024
_HEX128 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class EgressDeny:
    """Addresses no upstream's redirect or token realm may reach (its own excepted)."""

    networks: tuple[IPNetwork, ...] = ()
    # Single addresses (the node's, and /32 or /128 entries) looked up in a set.
    hosts: frozenset[IPAddress] = field(default_factory=frozenset)

    def denies(self, ip: IPAddress) -> bool:
        """Whether ``ip`` is in the deny list."""
        return ip in self.hosts or any(ip in net for net in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts)


def egress_deny(
    entries: Sequence[str], node_networks: Callable[[], list[IPNetwork]] | None = None
) -> EgressDeny:
    """The deny list of ``entries`` (blocking when ``node`` is listed: it reads the
    node's addresses). Raises ValueError for an entry that is not one, or when the
    node's addresses cannot be read (a deny list must not shrink without a word)."""
    networks, node = parse_entries(entries)
    if node:
        found = (node_networks or read_node_networks)()
        log.info("egress_deny: the node's own addresses, %d of them", len(found))
        networks.extend(found)
    return _split(networks)


def _split(networks: Iterable[IPNetwork]) -> EgressDeny:
    hosts = {n.network_address for n in networks if n.num_addresses == 1}
    rest = tuple(n for n in networks if n.num_addresses > 1)
    return EgressDeny(rest, frozenset(hosts))


def read_node_networks(proc: Path = PROC_NET) -> list[IPNetwork]:
    """Every local address of this network namespace (blocking; Linux).

    Raises ValueError when ``/proc/net`` cannot be read.
    """
    try:
        with open(proc / "fib_trie", encoding="ascii", errors="replace") as fh:
            trie = fh.read(MAX_PROC_BYTES)
        try:
            with open(proc / "if_inet6", encoding="ascii", errors="replace") as fh:
                inet6 = fh.read(MAX_PROC_BYTES)
        except FileNotFoundError:  # a kernel without IPv6
            inet6 = ""
    except OSError as exc:
        raise ValueError(f"egress_deny: node: cannot read {proc}: {exc.strerror}") from None
    return [*local_ipv4(trie), *local_ipv6(inet6)]


def local_ipv4(fib_trie: str) -> list[IPNetwork]:
    """The local addresses in ``/proc/net/fib_trie``: an address line (``|-- 10.0.0.5``)
    followed by ``/32 host LOCAL`` (``/8 host LOCAL`` for 127.0.0.0: all of it)."""
    found: dict[IPNetwork, None] = {}
    last: str | None = None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|--"):
            last = text[3:].strip()
        elif last is not None and text.endswith("host LOCAL") and text.startswith("/"):
            prefix = text.split(None, 1)[0]
            with contextlib.suppress(ValueError):  # not an address: not ours to guess
                found[ipaddress.ip_network(last + prefix, strict=False)] = None
    return list(found)


def local_ipv6(if_inet6: str) -> list[IPNetwork]:
    """The addresses in ``/proc/net/if_inet6`` (32 hex digits first on each line)."""
    found: dict[IPNetwork, None] = {}
    for line in if_inet6.splitlines():
        digits = line.split(None, 1)[0] if line.strip() else ""
        if _HEX128.fullmatch(digits):
            found[ipaddress.ip_network(ipaddress.IPv6Address(int(digits, 16)))] = None
    return list(found)
