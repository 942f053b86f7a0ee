"""What the serving path tells the savings ledger. Calls must be cheap and never block:
an implementation counts in memory and persists in the background."""

from __future__ import annotations

from typing import Literal, Protocol

Kind = Literal["blob", "manifest"]
# The origin of the bytes a client got: the local cache (a complete file, or a
# fill another request started), a peer node, or an upstream fetch this request
# caused. One word for it everywhere: "origin".
Origin = Literal["cache", "peer", "upstream"]


class Accounting(Protocol):
    """Receives one call per answered request and per upstream transfer."""

    def served(self, upstream: str, repo: str, kind: Kind, origin: Origin, nbytes: int) -> None:
        """A client got ``nbytes`` of a blob or manifest (GET only)."""

    def fetched(self, upstream: str, repo: str, kind: Kind, nbytes: int) -> None:
        """One upstream GET brought ``nbytes`` (a blob fill, a manifest)."""

    def stored(self, upstream: str, repo: str, nbytes: int) -> None:
        """A verified blob of ``nbytes`` was added to the cache."""


class NullAccounting:
    """Counts nothing."""

    def served(self, upstream: str, repo: str, kind: Kind, origin: Origin, nbytes: int) -> None:
        return None

    def fetched(self, upstream: str, repo: str, kind: Kind, nbytes: int) -> None:
        return None

    def stored(self, upstream: str, repo: str, nbytes: int) -> None:
        return None
