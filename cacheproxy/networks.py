"""The ``egress_deny`` setting's entries: CIDRs, and ``node``. Pure (read by the
configuration's checks, and by the egress rules that apply them)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The entry of ``egress_deny`` that stands for the node's own interface addresses.
NODE = "node"


def parse_entries(entries: Sequence[str]) -> tuple[list[IPNetwork], bool]:
    """(the CIDRs, whether ``node`` is listed) of ``egress_deny``; a bare address is a
    /32 or /128. Raises ValueError naming an entry that is neither."""
    networks: list[IPNetwork] = []
    node = False
    for entry in entries:
        text = entry.strip()
        if text.lower() == NODE:
            node = True
            continue
        try:
            # strict=False: "10.244.1.7/16" means its network, as ip route takes it.
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(
                f"egress_deny: {entry!r} is neither a CIDR (10.96.0.0/12) nor {NODE!r}"
            ) from None
    return networks, node
