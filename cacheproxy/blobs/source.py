"""What every link of the blob-source chain answers, and with what.

A client's request walks the chain until a link has the digest::

    local store -> fills in flight -> peers -> shared tier -> upstream

Each link is a :class:`BlobSource`, and most wrap the next one, as distribution's
proxy stores wrap the local store. What a link answers is a :class:`Body`: it knows
its size and its origin (the ledger is told by it, not by a guess) and sends
itself (sendfile for a complete file, tailing for a fill, relaying for a stream).
The links after the fills also hand out :class:`Feed`\\ s: the raw, unverified
bytes a fill downloads and checks before anything is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import aiohttp

from ..accounting import Origin
from ..oci import Digest
from ..upstream.client import Upstream
from .segments import Span

#: How a peer node's requests are named (``http.handlers.peer_requester_of``).
PEER_REQUESTER = "peer "


@dataclass(frozen=True, slots=True)
class Want:
    """A digest asked for under an upstream's repository (by ``requester``: a client's
    name or address, or a peer node's name, which bounds what each may start; "" for
    the node's own work, a prefetch)."""

    upstream: Upstream
    repo: str
    digest: Digest
    requester: str = ""

    @property
    def for_client(self) -> bool:
        """Whether a client of this node asked (not a peer node, not its own work)."""
        return bool(self.requester) and not self.requester.startswith(PEER_REQUESTER)


class Sink(Protocol):
    """Where a body's bytes go: an HTTP response, or a test's buffer."""

    async def write(self, data: bytes) -> None:
        """Send ``data``; raises ConnectionError when the receiver went away."""

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of ``fd`` from ``offset`` (kernel zero-copy if it can)."""


class Body(Protocol):
    """One blob's bytes as a link holds them."""

    @property
    def origin(self) -> Origin:
        """Where the bytes came from, for the ledger (the cache, a peer, the upstream)."""

    async def size(self) -> int | None:
        """The blob's size once the link knows it (None: its upstream never said)."""

    async def final_size(self) -> int:
        """The blob's size, waiting for the whole blob when nothing announced it."""

    async def send(self, sink: Sink, start: int, end: int | None) -> None:
        """Send bytes ``start..end`` (inclusive; None: to the end).

        A client never sees a clean end of a wrong or short body: the last byte
        goes out only once the whole blob is verified, and a failure raises a
        RegistryError after which the caller must break the connection.
        """

    def close(self) -> None:
        """Release what the body holds open (a file descriptor, a connection)."""

    def vouches(self, upstream: str, repo: str) -> bool:
        """Whether these bytes come from a fetch under this pair (this request's own, or
        another of the same pair): the upstream answered it, which is the links rule."""


class BlobSource(Protocol):
    """One link of the chain."""

    async def open(self, want: Want, first: int = 0) -> Body:
        """The blob's body; ``first``: the first byte the caller will ask for.

        Raises BlobUnknown (or the upstream's own error) when no link has it.
        """

    async def size(self, want: Want) -> int:
        """The blob's size, without sending or fetching it (HEAD)."""


class Feed(Protocol):
    """Unverified bytes of one blob from outside this node: a peer, the shared tier's
    bucket, or the upstream."""

    @property
    def origin(self) -> Origin:
        """Who is delivering right now ("peer" or "shared" until a feed falls back)."""

    @property
    def lanes(self) -> int:
        """How many ranges of one blob it may carry at once (connections)."""

    async def open(self, start: int, end: int | None = None) -> aiohttp.ClientResponse:
        """Bytes ``start..end`` of the blob (``end`` inclusive; None: to the end).

        Returns a 200 (the whole blob: a feed may ignore a range, RFC 9110 14.2) or
        a 206 answer, or raises a RegistryError. The caller checks the answer's
        Content-Range against what it asked.
        """

    def blame(self) -> None:
        """The bytes delivered failed verification."""


class Remote(BlobSource, Protocol):
    """A link that reaches outside this node: it also feeds fills."""

    def feed(self, want: Want) -> Feed:
        """A feed of the blob, falling back to the links after this one."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a fill's lanes stand, as they tell their swarm."""

    #: The spans on disk.
    have: Sequence[Span] = ()
    #: The spans on their way: asked for, and their answers came.
    coming: Sequence[Span] = ()
    #: The spans asked for and not landed yet (every lane in flight).
    asked: Sequence[Span] = ()


class Swarm(Protocol):
    """The peers holding a blob, and the policy that picks what each sends: what the
    lanes of a fill (``lanes.py``) ask of it and tell it. It never calls them."""

    @property
    def live(self) -> bool:
        """It still plans (False: it gave up; the feeds alone fetch the rest)."""

    @property
    def sole(self) -> bool:
        """It is the only planner: the feeds given stay idle (the owner is there)."""

    async def start(self) -> int | None:
        """Join the blob's swarm (nothing is here yet); its size, or None: the feeds
        alone (as without it)."""

    def plan(self, size: int, progress: Progress) -> list[tuple[Feed, Span]]:
        """The next ranges to ask peers for, the lanes standing at ``progress`` (what
        the swarm tells the blob's owner until the next plan)."""

    def ended(self, feed: Feed, error: BaseException | None) -> bool:
        """A lane on ``feed`` ended (``error`` None: completely); False when the feed
        is not one of the swarm's."""

    def blame(self) -> bool:
        """The blob failed verification: True when peers of the swarm sent some of
        it (the swarm decides who answers for it), False when the feeds alone did."""

    async def finish(self, progress: Progress) -> None:
        """The blob is verified here (``progress``: all of it on disk): say so to the
        owner (this node serves it now)."""

    async def close(self) -> None:
        """Stop what runs in the background."""


class Swarms(Protocol):
    """This node's swarms (cluster mode with holders: ``cacheproxy/swarm/``)."""

    def join(self, want: Want, owner: str) -> Swarm | None:
        """The swarm a fill of ``want`` fed by peers joins (``owner``: the digest's
        owner); None: the blob comes from the owner alone, as without holders."""


@runtime_checkable
class Swarmed(Protocol):
    """A feed that may also spread its blob over the peers holding it."""

    swarm: Swarm | None
