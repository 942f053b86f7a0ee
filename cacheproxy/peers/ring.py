"""Rendezvous (highest-random-weight) hashing: who owns a key. Pure.

Every node ranks the members for a key by ``sha256(member + key)`` and takes the
highest: nodes that agree on membership agree on the owner, with no coordinator,
and a change of membership moves only the keys of the member that came or went.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(member: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{member}\0{key}".encode()).digest()[:8], "big")


def ranked(key: str, members: Iterable[str]) -> list[str]:
    """Members in the order they should serve ``key``: owner first."""
    return sorted(set(members), key=lambda m: (score(m, key), m), reverse=True)


def ask_before_self(key: str, members: Iterable[str], self_url: str) -> list[str]:
    """The peers to try for ``key`` before going upstream ourselves.

    Those ranked above this node: if this node is the owner, nobody; if the owner
    fails, the next in rank, and so on until this node's own turn, which means the
    upstream.
    """
    order = ranked(key, [*members, self_url])
    return order[: order.index(self_url)]
