"""Pieces of one blob: what is on disk, what to ask for next, and what came back. Pure.

A fill may take a blob as byte ranges on several connections at once (object
stores and CDNs throttle each connection). These are the decisions, free of I/O:

- :class:`Extents`: the disjoint spans already written; the contiguous prefix.
- :func:`plan`: which byte range goes to which feed next, given what is written
  or asked for, the free lanes of each feed and the positions readers wait at.
- :func:`read_answer`: whether an answer carries the range that was asked for
  (RFC 9110 sections 14.4 and 15.3.7).
- :class:`RangeSupport`: the upstreams that were seen to mishandle ranges, so
  their next blobs come in one stream.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..ranges import parse_content_span

#: A lane asks for a span at most this many times a blob's share per lane, so a
#: huge blob is not cut into thousands of requests.
ROUNDS_PER_LANE = 8


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes ``start`` up to ``end`` (exclusive)."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


class Extents:
    """Disjoint, sorted spans of a blob that are on disk."""

    def __init__(self) -> None:
        self._spans: list[Span] = []

    def add(self, start: int, end: int) -> None:
        """Mark ``start..end`` (exclusive) written, merging it with its neighbours."""
        if end <= start:
            return
        kept: list[Span] = []
        for span in self._spans:
            if span.end < start or span.start > end:
                kept.append(span)
            else:
                start, end = min(start, span.start), max(end, span.end)
        kept.append(Span(start, end))
        kept.sort(key=lambda s: s.start)
        self._spans = kept

    def end_at(self, pos: int) -> int | None:
        """The end of the written span holding byte ``pos``; None if it is not written."""
        for span in self._spans:
            if span.start <= pos < span.end:
                return span.end
            if span.start > pos:
                break
        return None

    @property
    def prefix(self) -> int:
        """Bytes written from the start without a hole."""
        first = self._spans[0] if self._spans else None
        return first.end if first is not None and first.start == 0 else 0

    @property
    def total(self) -> int:
        return sum(len(s) for s in self._spans)

    def spans(self) -> list[Span]:
        return list(self._spans)


def gaps(size: int, taken: Iterable[Span]) -> list[Span]:
    """The spans of ``0..size`` that nothing in ``taken`` covers, in order."""
    out: list[Span] = []
    pos = 0
    for span in sorted(taken, key=lambda s: s.start):
        if span.start > pos:
            out.append(Span(pos, min(span.start, size)))
        pos = max(pos, span.end)
        if pos >= size:
            break
    if pos < size:
        out.append(Span(pos, size))
    return [g for g in out if len(g) > 0]


def chunk_size(size: int, lanes: int, min_size: int) -> int:
    """How much one request asks for: at least ``min_size``, and big enough that a
    blob takes about ``ROUNDS_PER_LANE`` requests per lane."""
    share = -(-size // max(1, lanes * ROUNDS_PER_LANE))
    return max(min_size, share)


def plan(
    size: int,
    taken: Iterable[Span],
    free: Sequence[int],
    *,
    chunk: int,
    min_size: int,
    lanes: int,
    pending: int = 0,
    hints: Sequence[int] = (),
) -> list[tuple[int, Span]]:
    """The next requests: ``(feed index, span)`` pairs, at most ``free[i]`` for feed i.

    ``taken``: spans written or already asked for (never asked again: the bytes
    fetched stay equal to the blob's size); ``pending``: how many of those are
    asked for and still on their way. Spans go out in order, so the prefix readers
    see grows steadily, except that a reader waiting at a position nobody has
    asked for yet (``hints``) has that position asked for first. Spans are
    ``chunk`` long until the work left (open plus pending) is less than that per
    lane; then each takes a lane's share, so the ``lanes`` connections finish
    together, but never less than a quarter of ``min_size``; a remainder shorter
    than that joins the span before it. Feeds come first in the order given.
    """
    open_spans = gaps(size, taken)
    left = sum(len(g) for g in open_spans)
    floor = max(1, min_size // 4)
    share = -(-(left + pending) // max(1, lanes))
    length = max(floor, min(chunk, share))
    out: list[tuple[int, Span]] = []
    for feed, count in enumerate(free):
        for _ in range(count):
            if not open_spans:
                return out
            index, start = _pick(open_spans, hints)
            gap = open_spans[index]
            end = min(gap.end, start + length)
            if gap.end - end < floor:
                end = gap.end
            span = Span(start, end)
            out.append((feed, span))
            rest = [Span(gap.start, start), Span(end, gap.end)]
            open_spans[index : index + 1] = [s for s in rest if len(s) > 0]
    return out


def _pick(open_spans: list[Span], hints: Sequence[int]) -> tuple[int, int]:
    """(index of the gap, first byte to ask): the first hinted gap, else the first gap."""
    for pos in sorted(hints):
        for i, gap in enumerate(open_spans):
            if gap.start <= pos < gap.end:
                return i, pos
    return 0, open_spans[0].start


@dataclass(frozen=True, slots=True)
class Answer:
    """What a feed answered to a request for ``asked``.

    ``kind``: "whole" (a 200: the representation from byte 0), "range" (a 206
    carrying exactly the bytes asked for) or "bad" (anything else). ``end`` is
    exclusive; None with ``total`` None means "to the end, length unknown".
    """

    kind: Literal["whole", "range", "bad"]
    start: int = 0
    end: int | None = None
    total: int | None = None


BAD = Answer("bad")


def read_answer(
    status: int,
    content_range: str | None,
    content_length: int | None,
    start: int,
    end: int | None,
    size: int | None = None,
) -> Answer:
    """Check an answer to a request for bytes ``start..end`` (inclusive; None: to the
    end) of a blob of ``size`` bytes (None: not known yet)."""
    if status == 200:
        # RFC 9110 14.2: a server may ignore Range and send the whole representation.
        if size is not None and content_length not in (None, size):
            return BAD
        total = content_length if content_length is not None else size
        return Answer("whole", 0, total, total)
    if status != 206 or content_range is None:
        return BAD
    span = parse_content_span(content_range)
    if span is None:
        return BAD
    first, last, total = span
    if first != start or (size is not None and total not in (None, size)):
        return BAD
    total = total if total is not None else size
    wanted_last = end if end is not None else None
    if total is not None:
        wanted_last = total - 1 if end is None else min(end, total - 1)
    if wanted_last is not None and last != wanted_last:
        return BAD
    if content_length is not None and content_length != last - first + 1:
        return BAD
    return Answer("range", first, last + 1, total)


class RangeSupport:
    """Upstreams seen to answer a range wrongly (a 200, a wrong ``Content-Range``, no
    length): their blobs come in one stream for a while. Bounded; entries expire so
    an upstream that changes its storage is asked again."""

    def __init__(
        self, ttl: float = 3600.0, limit: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._limit = limit
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def ignored_by(self, key: str) -> bool:
        """Whether ``key`` (an upstream's name) mishandled a range recently."""
        when = self._seen.get(key)
        if when is None:
            return False
        if self._clock() - when > self._ttl:
            del self._seen[key]
            return False
        return True

    def remember(self, key: str) -> None:
        self._seen[key] = self._clock()
        self._seen.move_to_end(key)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
