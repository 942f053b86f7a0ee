"""What the serving path tells the savings ledger. Calls must be cheap and never block:
an implementation counts in memory and persists in the background."""

from __future__ import annotations

from typing import Literal, Protocol

Kind = Literal["blob", "manifest"]
# The origin of the bytes a client got: the local cache (a complete file, or a
# fill another request started), a peer node, the shared tier (a bucket other
# proxies fill too), or an upstream fetch this request caused. One word for it
# everywhere: "origin".
Origin = Literal["cache", "peer", "shared", "upstream"]
# What a request to the shared tier is billed as: "get" (GET, HEAD) or "put" (PUT,
# POST, LIST: uploads, multipart steps, listings). DELETE is free and not counted.
SharedOp = Literal["get", "put"]


class Accounting(Protocol):
    """Receives one call per answered request and per upstream transfer."""

    def served(self, upstream: str, repo: str, kind: Kind, origin: Origin, nbytes: int) -> None:
        """A client got ``nbytes`` of a blob or manifest (GET only)."""

    def fetched(self, upstream: str, repo: str, kind: Kind, nbytes: int) -> None:
        """One upstream GET brought ``nbytes`` (a blob fill, a manifest)."""

    def stored(self, upstream: str, repo: str, nbytes: int) -> None:
        """A verified blob of ``nbytes`` was added to the cache."""

    def shared(self, upstream: str, repo: str, op: SharedOp, requests: int, nbytes: int) -> None:
        """Requests to the shared tier, or the bytes they moved (read or written)."""


class NullAccounting:
    """Counts nothing."""

    def served(self, upstream: str, repo: str, kind: Kind, origin: Origin, nbytes: int) -> None:
        return None

    def fetched(self, upstream: str, repo: str, kind: Kind, nbytes: int) -> None:
        return None

    def stored(self, upstream: str, repo: str, nbytes: int) -> None:
        return None

    def shared(self, upstream: str, repo: str, op: SharedOp, requests: int, nbytes: int) -> None:
        return None
