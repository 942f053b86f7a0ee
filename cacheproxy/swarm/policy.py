"""Who sends which bytes of a blob inside a cluster: the swarm policy. Pure.

The owner of a digest (rendezvous hashing, ``peers/ring.py``) stays the only node that
fetches it from outside the cluster. It also keeps the digest's holders: the nodes
that have the blob or are filling it, with the pieces each has and the pieces each
is receiving now. A node that needs the blob asks the owner for holders, then takes
pieces (fixed-size byte ranges) from several of them at once; a holder serves a
piece it is still receiving by tailing its growing file. Each node uploads to a
bounded number of peers at once and answers "busy" beyond that, so the asker turns
to another holder.

Why this is a tree and not a star. Today every node streams the whole blob from the
owner, so the owner's uplink carries ``N - 1`` copies and a rollout takes ``N - 1``
times as long as one node's pull. Here the owner admits only ``UPLOAD_SLOTS`` askers;
everyone else is refused and asks the holders those askers became, which admit
``UPLOAD_SLOTS`` each, and so on: every piece spreads down a tree of fan-out
``UPLOAD_SLOTS`` whose depth grows as ``log(N)``, and every node's uplink carries
about one copy of the blob whatever ``N`` is. Asking for the rarest piece first (the
one fewest holders have or are receiving) makes the askers of one holder take
different pieces, so the trees of different pieces have different inner nodes and
every node's uplink is busy (BitTorrent's rarest-first; the striped trees of
SplitStream). Taking pieces from several holders at once is what lets a node
download at its full rate although each holder splits its uplink between askers.

Ideas carried over, not code: Kraken (an origin plus a tracker that names peers, and
a per-peer connection bound), Dragonfly (pieces, a scheduler that names parents),
BitTorrent (rarest first, choking = the busy answer, a bounded random peer list).

Owner-only (today's star) is this policy with the holder list reduced to the owner,
one source, one piece the size of the blob and no upload bound: see :func:`owner_only`.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..blobs.segments import Span

#: Bytes per piece: one ranged GET. Big enough that a request's round trip is noise
#: next to its transfer (4 MiB takes 84 ms at 400 Mbit/s), small enough that a
#: 200 MB layer has dozens of pieces to spread.
PIECE_SIZE = 4 << 20
#: Holders one node takes pieces from at once.
MAX_SOURCES = 4
#: Peers one node uploads to at once; beyond that it answers "busy".
UPLOAD_SLOTS = 4
#: Holders the owner names to one asker (the owner itself among them).
HOLDERS_LISTED = 16
#: Pieces from the first one a node lacks that it asks for first (see :func:`plan`).
WINDOW = 16


@dataclass(frozen=True)
class Holder:
    """A node that has a blob or is filling it, as the owner last heard."""

    node: str
    #: Pieces complete on this node.
    have: frozenset[int] = frozenset()
    #: Pieces it is receiving now: it can serve them by tailing its file.
    coming: frozenset[int] = frozenset()

    def offers(self) -> frozenset[int]:
        """Every piece this holder can serve now or as it arrives."""
        return self.have | self.coming


@dataclass(frozen=True)
class Request:
    """Ask ``node`` for bytes ``[start, end)`` of the blob: piece ``piece``."""

    node: str
    piece: int
    start: int
    end: int


@dataclass(frozen=True)
class Asking:
    """What a node that needs a blob knows when it plans its next requests."""

    me: str
    size: int
    holders: tuple[Holder, ...]
    #: Pieces this node has complete: its contiguous prefix (:func:`pieces_below`) and
    #: any segment that landed further on.
    have: frozenset[int] = frozenset()
    in_flight: tuple[Request, ...] = ()
    #: Holders that answered busy or failed lately: not asked this time.
    avoid: frozenset[str] = frozenset()
    max_sources: int = MAX_SOURCES
    piece_size: int = PIECE_SIZE
    #: Pieces from the first one this node lacks that go before the rest.
    window: int = WINDOW

    def __post_init__(self) -> None:
        if self.size < 0 or self.piece_size <= 0:
            raise ValueError("size must be >= 0 and piece_size > 0")


def piece_count(size: int, piece_size: int) -> int:
    """How many pieces a blob of ``size`` bytes has (the last may be short)."""
    return -(-size // piece_size)


def span(piece: int, size: int, piece_size: int) -> Span:
    """The bytes of ``piece``."""
    start = piece * piece_size
    return Span(start, min(size, start + piece_size))


def pieces_below(written: int, size: int, piece_size: int) -> frozenset[int]:
    """The complete pieces of a contiguous prefix of ``written`` bytes."""
    if written >= size:
        return frozenset(range(piece_count(size, piece_size)))
    return frozenset(range(written // piece_size))


_MASK = (1 << 64) - 1


def _mix(a: int, b: int, c: int = 0) -> int:
    """A cheap, stable spread of three integers (splitmix64's finaliser).

    Stands in for a random choice: every asker breaks ties differently, so a thousand
    askers do not all pick the same holder and piece, and a plan is reproducible.
    """
    x = (a * 0x9E3779B97F4A7C15 + b * 0xC2B2AE3D27D4EB4F + c) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _id(name: str) -> int:
    return zlib.crc32(name.encode())


def plan(asking: Asking) -> list[Request]:
    """The next requests to send: at most one per holder, up to ``max_sources`` in flight.

    Greedy: among every (holder, piece) this node may ask (the holder is not avoided
    and not already sending to us; the piece is neither here nor on its way), take
    a piece within ``window`` pieces of the first one this node lacks before any
    other, then the piece that the fewest holders offer, then one a holder has over
    one it is still receiving (tailing is only as fast as the holder's own feed),
    then a per-asker spread. Repeat with that holder and that piece taken.

    Why the window: a blob is verified by one digest over its bytes in order, and
    its readers are sent it in order, so pieces far ahead of what is contiguous
    wait, on disk, for the hole before them; the digest, and the readers, then
    take them all at the end, after the last piece came. Asking first near the
    start keeps both moving while the pieces land. Inside the window the rarest
    still go first, and spread, so the askers of one holder take different pieces.
    """
    free = asking.max_sources - len(asking.in_flight)
    if free <= 0:
        return []
    count = piece_count(asking.size, asking.piece_size)
    taken = set(asking.have)
    taken.update(r.piece for r in asking.in_flight)
    if len(taken) >= count:
        return []
    busy = set(asking.avoid)
    busy.update(r.node for r in asking.in_flight)
    busy.add(asking.me)
    first = next((p for p in range(count) if p not in asking.have), count)
    near = first + max(asking.window, 1)
    avail: Counter[int] = Counter()
    usable: list[tuple[Holder, frozenset[int]]] = []
    for holder in asking.holders:
        offer = holder.offers()
        avail.update(offer)
        if holder.node not in busy:
            usable.append((holder, offer))
    me = _id(asking.me)
    out: list[Request] = []
    while len(out) < free:
        best: tuple[int, int, Holder, int] | None = None
        for entry in usable:
            holder, offer = entry
            left = [p for p in offer if p not in taken and p < count]
            if not left:
                continue
            # Near the start first, then rarity (twice the count), then whether the
            # holder has the piece.
            far = 2 * len(asking.holders) + 2
            rank = {p: far * (p >= near) + 2 * avail[p] + (p not in holder.have) for p in left}
            low = min(rank.values())
            if best is not None and low > best[0]:
                continue
            salt = _id(holder.node)
            for p, r in rank.items():
                if r == low:
                    spread = _mix(me, salt, p)
                    if best is None or (low, spread) < (best[0], best[1]):
                        best = (low, spread, holder, p)
        if best is None:
            break
        _, _, holder, p = best
        piece = span(p, asking.size, asking.piece_size)
        out.append(Request(holder.node, p, piece.start, piece.end))
        taken.add(p)
        usable = [u for u in usable if u[0] is not holder]
    return out


def admit(serving: int, slots: int | None = UPLOAD_SLOTS) -> bool:
    """Whether a node now uploading to ``serving`` peers takes one more.

    ``None``: no bound (the owner-only star). Refusing is cheap for the asker, which
    holds a list of other holders; accepting one more would split this uplink
    further and make every transfer on it slower, while the refused asker's bytes
    come as fast from a holder with a free slot. On the wire a refusal is a "busy"
    answer (429, RFC 6585) that the asker takes as "try another holder": it avoids
    that holder briefly but does not count it as failed.
    """
    return slots is None or serving < slots


def listed(
    holders: Iterable[Holder], asker: str, owner: str, limit: int = HOLDERS_LISTED
) -> tuple[Holder, ...]:
    """The holders the owner names to ``asker``: itself first, then a per-asker sample.

    The owner is always named: early on it is the only one with bytes. The others are
    ranked by a hash of (asker, holder), a different but stable sample for every
    asker, so the load spreads over all holders and each list stays bounded.
    """
    me = _id(asker)
    others: list[Holder] = []
    first: list[Holder] = []
    for holder in holders:
        if holder.node == asker:
            continue
        (first if holder.node == owner else others).append(holder)
    others.sort(key=lambda h: _mix(me, _id(h.node)))
    return tuple(first + others)[: max(limit, 1)]


def owner_only(asker: str, owner: Holder, size: int, in_flight: Sequence[Request] = ()) -> Asking:
    """Today's policy as a special case: the owner alone, one source, the whole blob.

    With one piece the size of the blob, the one request is the whole blob from the
    owner (tailing its fill), and the owner serves with ``admit(..., slots=None)``.
    """
    return Asking(
        me=asker,
        size=size,
        holders=(owner,),
        in_flight=tuple(in_flight),
        max_sources=1,
        piece_size=max(size, 1),
    )
