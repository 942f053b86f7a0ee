"""The pure pieces of a segmented fill: extents, the planner, answers to ranges."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.blobs.segments import (
    Answer,
    Extents,
    RangeSupport,
    Span,
    chunk_size,
    gaps,
    plan,
    read_answer,
)

MIB = 1 << 20


# --- extents ----------------------------------------------------------------------


def test_extents_merge_and_prefix() -> None:
    ext = Extents()
    assert (ext.prefix, ext.total, ext.end_at(0)) == (0, 0, None)
    ext.add(10, 20)
    assert (ext.prefix, ext.end_at(10), ext.end_at(19), ext.end_at(20)) == (0, 20, 20, None)
    ext.add(0, 5)
    assert ext.prefix == 5
    ext.add(5, 10)  # fills the hole: one span
    assert ext.spans() == [Span(0, 20)]
    assert ext.prefix == 20
    ext.add(30, 40)
    ext.add(15, 35)  # overlaps both neighbours
    assert ext.spans() == [Span(0, 40)]
    ext.add(50, 50)  # empty: ignored
    assert ext.total == 40


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 50)), max_size=30))
def test_extents_match_a_set_of_bytes(writes: list[tuple[int, int]]) -> None:
    ext = Extents()
    written: set[int] = set()
    for start, length in writes:
        ext.add(start, start + length)
        written.update(range(start, start + length))
    assert ext.total == len(written)
    spans = ext.spans()
    assert all(a.end < b.start for a, b in itertools.pairwise(spans))
    prefix = 0
    while prefix in written:
        prefix += 1
    assert ext.prefix == prefix
    for pos in range(0, 260, 7):
        end = ext.end_at(pos)
        if pos in written:
            assert end is not None and all(p in written for p in range(pos, end))
            assert end not in written
        else:
            assert end is None


# --- planning -----------------------------------------------------------------------


def test_gaps() -> None:
    assert gaps(100, []) == [Span(0, 100)]
    assert gaps(100, [Span(0, 10), Span(5, 30), Span(50, 60)]) == [Span(30, 50), Span(60, 100)]
    assert gaps(100, [Span(0, 100)]) == []
    assert gaps(100, [Span(90, 120)]) == [Span(0, 90)]


def test_chunk_size() -> None:
    assert chunk_size(200 * MIB, 4, 8 * MIB) == 8 * MIB
    # A huge blob: about 8 requests per lane, not thousands.
    assert chunk_size(1024 * MIB, 4, 8 * MIB) == 32 * MIB


def test_plan_hands_out_spans_in_order_after_the_first() -> None:
    size = 64 * MIB
    first = Span(0, 8 * MIB)
    out = plan(size, [first], [3], chunk=8 * MIB, min_size=8 * MIB, lanes=4)
    assert out == [
        (0, Span(8 * MIB, 16 * MIB)),
        (0, Span(16 * MIB, 24 * MIB)),
        (0, Span(24 * MIB, 32 * MIB)),
    ]


def test_plan_respects_free_lanes_per_feed_and_their_order() -> None:
    out = plan(100, [], [1, 0, 2], chunk=10, min_size=10, lanes=3)
    assert [feed for feed, _ in out] == [0, 2, 2]
    assert [s.start for _, s in out] == [0, 10, 20]
    assert plan(100, [], [0, 0], chunk=10, min_size=10, lanes=2) == []
    assert plan(100, [Span(0, 100)], [4], chunk=10, min_size=10, lanes=4) == []


def test_plan_shrinks_spans_near_the_end_so_lanes_finish_together() -> None:
    # 40 bytes left for 4 lanes: 10 each, not one lane taking a 32-byte chunk.
    out = plan(100, [Span(0, 60)], [4], chunk=32, min_size=8, lanes=4)
    assert [len(s) for _, s in out] == [10, 10, 10, 10]
    # 3 lanes still have 30 bytes on their way: the free one takes a share of
    # what is left and pending, not the whole chunk.
    out = plan(100, [Span(0, 80)], [1], chunk=32, min_size=8, lanes=4, pending=30)
    assert out == [(0, Span(80, 93))]
    # Never below a quarter of the minimum; a smaller remainder joins the span.
    out = plan(100, [Span(0, 90)], [4], chunk=32, min_size=16, lanes=4)
    assert [s for _, s in out] == [Span(90, 94), Span(94, 100)]


def test_plan_never_leaves_a_sliver() -> None:
    out = plan(101, [], [1], chunk=50, min_size=40, lanes=2)
    assert out == [(0, Span(0, 50))]
    out = plan(101, [Span(0, 50)], [1], chunk=50, min_size=40, lanes=2, pending=50)
    assert out == [(0, Span(50, 101))]  # 50 + 1 would leave a 1-byte request


def test_plan_asks_first_where_a_reader_waits() -> None:
    taken = [Span(0, 10)]
    out = plan(100, taken, [2], chunk=10, min_size=10, lanes=3, hints=[75, 5])
    # 5 is already asked for; 75 is nobody's yet: it goes first, then the order.
    assert out == [(0, Span(75, 85)), (0, Span(10, 20))]


@given(
    size=st.integers(1, 5000),
    taken=st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 700)), max_size=8),
    free=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    chunk=st.integers(1, 900),
    min_size=st.integers(1, 900),
    hints=st.lists(st.integers(0, 5000), max_size=4),
)
def test_plan_never_overlaps_and_covers_only_what_is_free(
    size: int,
    taken: list[tuple[int, int]],
    free: list[int],
    chunk: int,
    min_size: int,
    hints: list[int],
) -> None:
    spans = [Span(a, a + n) for a, n in taken]
    out = plan(
        size, spans, free, chunk=chunk, min_size=min_size, lanes=max(1, sum(free)), hints=hints
    )
    busy = {b for s in spans for b in range(s.start, s.end)}
    asked: set[int] = set()
    for _, span in out:
        assert 0 <= span.start < span.end <= size
        got = set(range(span.start, span.end))
        assert not got & busy, "asked again for bytes already taken"
        assert not got & asked, "two requests overlap"
        asked |= got
    for feed, count in enumerate(free):
        assert sum(1 for f, _ in out if f == feed) <= count
    if len(out) < sum(free):  # a lane went unused: nothing was left to ask for
        assert busy | asked >= set(range(size))


# --- answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # (status, Content-Range, Content-Length, start, end, size)
        ((206, "bytes 0-9/100", 10, 0, 9, None), Answer("range", 0, 10, 100)),
        ((206, "bytes 0-99/100", 100, 0, 199, None), Answer("range", 0, 100, 100)),
        ((206, "bytes 50-99/100", 50, 50, None, 100), Answer("range", 50, 100, 100)),
        ((206, "bytes 0-9/*", 10, 0, 9, None), Answer("range", 0, 10, None)),
        ((206, "bytes 0-9/*", None, 0, 9, 100), Answer("range", 0, 10, 100)),
        ((200, None, 100, 0, 9, None), Answer("whole", 0, 100, 100)),
        ((200, None, None, 0, None, None), Answer("whole", 0, None, None)),
        ((200, None, None, 40, None, 100), Answer("whole", 0, 100, 100)),
        ((200, None, 99, 40, None, 100), Answer("bad")),  # another length
        ((206, "bytes 1-9/100", 9, 0, 9, None), Answer("bad")),  # another start
        ((206, "bytes 0-8/100", 9, 0, 9, None), Answer("bad")),  # another end
        ((206, "bytes 0-9/100", 11, 0, 9, None), Answer("bad")),  # length disagrees
        ((206, "bytes 0-9/90", 10, 0, 9, 100), Answer("bad")),  # another total
        ((206, None, 10, 0, 9, None), Answer("bad")),
        ((206, "bytes */100", None, 0, 9, None), Answer("bad")),
        ((416, "bytes */100", None, 0, 9, None), Answer("bad")),
    ],
)
def test_read_answer(
    args: tuple[int, str | None, int | None, int, int | None, int | None], expected: Answer
) -> None:
    assert read_answer(*args) == expected


def test_range_support_remembers_for_a_while_and_is_bounded() -> None:
    now = [0.0]
    support = RangeSupport(ttl=60.0, limit=2, clock=lambda: now[0])
    assert not support.ignored_by("a")
    support.remember("a")
    assert support.ignored_by("a")
    now[0] = 61.0
    assert not support.ignored_by("a")
    for key in ("b", "c", "d"):
        support.remember(key)
    assert [support.ignored_by(k) for k in ("b", "c", "d")] == [False, True, True]
