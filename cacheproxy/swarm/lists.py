"""The holders of a blob as its owner knows them, and how they are told. Pure.

A node filling a blob, or done with it, tells the digest's owner how far it got:
the byte spans it has on disk and the spans on their way to it (being received
now, so it can serve them by tailing its file). The owner keeps the latest report
of each holder (:class:`HolderLists`: bounded in digests and in holders per digest,
entries expire) and answers each report with the holders it names to that asker
(``policy.listed``). On the wire a list of spans is ``start-end,start-end`` (bytes,
end exclusive), at most :data:`MAX_SPANS` of them: a holder that has more says
less than it has, which costs at most a request to someone else. The asker turns
each report into the pieces of its own plan (:func:`holder_of`).
"""

from __future__ import annotations

import bisect
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..blobs.segments import Span
from ..numbers import parse_digits
from . import policy

#: Spans a report carries at most, for what a node has and for what is coming.
MAX_SPANS = 32
#: Digests an owner keeps holder lists for (least recently reported go first).
MAX_DIGESTS = 4096
#: Holders kept per digest (least recently reported go first).
MAX_HOLDERS = 64
#: Seconds a report stays on the list without a newer one from the same node.
REPORT_TTL = 120.0
#: Bytes of a holder list answer at most (the asker reads no more).
MAX_ANSWER = 64 * 1024

Spans = tuple[Span, ...]


def list_key(upstream: str, digest: str) -> str:
    """What an owner keeps a holder list under: a fill under one upstream serves no
    piece under another, so each upstream's holders are listed apart."""
    return f"{upstream} {digest}"


def merge(spans: Iterable[Span]) -> Spans:
    """The sorted union of ``spans`` (touching spans joined; empty ones dropped)."""
    out: list[Span] = []
    for span in sorted((s for s in spans if s.end > s.start), key=lambda s: s.start):
        if out and span.start <= out[-1].end:
            if span.end > out[-1].end:
                out[-1] = Span(out[-1].start, span.end)
        else:
            out.append(span)
    return tuple(out)


def encode_spans(spans: Iterable[Span], limit: int = MAX_SPANS) -> str:
    """``start-end,...`` of the first ``limit`` spans of the union of ``spans``."""
    return ",".join(f"{s.start}-{s.end}" for s in merge(spans)[:limit])


def parse_spans(text: str, size: int | None = None, limit: int = MAX_SPANS) -> Spans:
    """The spans of ``text`` (see :func:`encode_spans`); ValueError when malformed,
    more than ``limit``, or past ``size``."""
    if not text:
        return ()
    items = text.split(",")
    if len(items) > limit:
        raise ValueError("too many spans")
    spans = []
    for item in items:
        start, sep, end = item.partition("-")
        first, stop = parse_digits(start), parse_digits(end)
        if not sep or first is None or stop is None:
            raise ValueError(f"not a span: {item[:40]!r}")
        if stop <= first or (size is not None and stop > size):
            raise ValueError(f"not a span of the blob: {item[:40]!r}")
        spans.append(Span(first, stop))
    return merge(spans)


def ahead(spans: Iterable[Span], reach: int) -> Spans:
    """The first ``reach`` bytes of each span: what a lane in flight brings next.

    A lane's later bytes come only after its earlier ones, so a peer tailing them
    would wait with nothing flowing; what a holder offers as coming is the next
    piece or so of each lane (the rest is offered once it is near).
    """
    return merge(Span(s.start, min(s.end, s.start + reach)) for s in spans)


def covers(spans: Spans, start: int, end: int) -> bool:
    """Whether the merged ``spans`` hold every byte of ``start..end`` (exclusive)."""
    i = bisect.bisect_right([s.start for s in spans], start) - 1
    return i >= 0 and end <= spans[i].end


def whole_pieces(spans: Spans, size: int, piece_size: int) -> frozenset[int]:
    """The pieces every byte of which is in the merged ``spans``."""
    out: set[int] = set()
    for span in spans:
        first = -(-span.start // piece_size)
        # A short last piece counts when the span reaches the end of the blob.
        end = span.end
        stop = policy.piece_count(size, piece_size) if end >= size else end // piece_size
        out.update(range(first, stop))
    return frozenset(out)


def holder_of(node: str, have: Spans, coming: Spans, size: int, piece_size: int) -> policy.Holder:
    """A report as the plan sees it: the pieces it has, and those it will have once
    what is coming lands (the rest of a piece it has partly on disk included)."""
    has = whole_pieces(have, size, piece_size)
    will = whole_pieces(merge((*have, *coming)), size, piece_size)
    return policy.Holder(node, has, will - has)


@dataclass(frozen=True)
class HolderReport:
    """One holder's progress on one blob (``wire``: its spans as they came, so an
    owner passes a report on without encoding it again)."""

    node: str
    have: Spans = ()
    coming: Spans = ()
    wire: tuple[str, str] | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, node: str, have: str, coming: str, size: int | None = None) -> HolderReport:
        """A report as it came on the wire; ValueError when its spans are malformed."""
        return cls(node, parse_spans(have, size), parse_spans(coming, size), (have, coming))

    def texts(self) -> tuple[str, str]:
        """Its spans on the wire: what it has, what is coming."""
        if self.wire is None:
            return encode_spans(self.have), encode_spans(self.coming)
        return self.wire

    def complete(self, size: int | None) -> bool:
        return size is not None and covers(self.have, 0, size)


class HolderLists:
    """The owner's holders per digest: bounded in both directions, entries expire."""

    def __init__(
        self,
        digests: int = MAX_DIGESTS,
        per_digest: int = MAX_HOLDERS,
        ttl: float = REPORT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._digests = digests
        self._per_digest = per_digest
        self._ttl = ttl
        self._clock = clock
        self._lists: OrderedDict[str, OrderedDict[str, tuple[float, HolderReport]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lists)

    def report(self, digest: str, report: HolderReport) -> None:
        """Keep ``report`` as its node's latest for ``digest``."""
        holders = self._lists.get(digest)
        if holders is None:
            holders = self._lists[digest] = OrderedDict()
        self._lists.move_to_end(digest)
        holders[report.node] = (self._clock(), report)
        holders.move_to_end(report.node)
        while len(holders) > self._per_digest:
            holders.popitem(last=False)
        while len(self._lists) > self._digests:
            self._lists.popitem(last=False)
        # The least recently reported digests go once their newest report is stale.
        now = self._clock()
        while self._lists:
            oldest = next(iter(self._lists.values()))
            if now - next(reversed(oldest.values()))[0] <= self._ttl:
                break
            self._lists.popitem(last=False)

    def forget(self, digest: str, node: str) -> None:
        holders = self._lists.get(digest)
        if holders is not None:
            holders.pop(node, None)
            if not holders:
                del self._lists[digest]

    def reports(self, digest: str) -> list[HolderReport]:
        """The live reports for ``digest``, the most recent first."""
        holders = self._lists.get(digest)
        if holders is None:
            return []
        now = self._clock()
        for node in [n for n, (at, _) in holders.items() if now - at > self._ttl]:
            del holders[node]
        if not holders:
            del self._lists[digest]
            return []
        return [report for _, report in reversed(holders.values())]


def named_to(
    reports: Sequence[HolderReport],
    asker: str,
    owner: HolderReport,
    limit: int = policy.HOLDERS_LISTED,
) -> list[HolderReport]:
    """What the owner names to ``asker``: itself first, then a per-asker sample."""
    by_node = {r.node: r for r in reports if r.node != owner.node}
    by_node[owner.node] = owner
    chosen = policy.listed((policy.Holder(n) for n in by_node), asker, owner.node, limit)
    return [by_node[h.node] for h in chosen]


def encode_list(size: int | None, reports: Sequence[HolderReport]) -> bytes:
    """The owner's answer to a report: the blob's size and the holders it names."""
    holders = []
    for report in reports:
        have, coming = report.texts()
        holders.append({"node": report.node, "have": have, "coming": coming})
    return json.dumps({"size": size, "holders": holders}, separators=(",", ":")).encode()


def read_list(body: bytes) -> tuple[int | None, list[tuple[str, str, str]]]:
    """The size and the holders of an owner's answer, as (node, have, coming) with the
    spans as they came (:meth:`HolderReport.parse` reads them); ValueError when malformed."""
    if len(body) > MAX_ANSWER:
        raise ValueError("holder list too long")
    doc = json.loads(body)
    size = doc.get("size") if isinstance(doc, dict) else None
    holders = doc.get("holders") if isinstance(doc, dict) else None
    if (size is not None and (not isinstance(size, int) or size < 0)) or not isinstance(
        holders, list
    ):
        raise ValueError("not a holder list")
    out = []
    for item in holders[: policy.HOLDERS_LISTED * 2]:
        if not isinstance(item, dict):
            raise ValueError("not a holder")
        node, have, coming = item.get("node"), item.get("have", ""), item.get("coming", "")
        if not isinstance(node, str) or not isinstance(have, str) or not isinstance(coming, str):
            raise ValueError("not a holder")
        out.append((node, have, coming))
    return size, out
