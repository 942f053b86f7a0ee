"""The owner's holder lists and how they are told (swarm/lists.py, pure), and the
upload bound of a holder (swarm/holdings.py)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.blobs.segments import Span
from cacheproxy.swarm import policy
from cacheproxy.swarm.holdings import SMALL_RANGE, Uploads
from cacheproxy.swarm.lists import (
    MAX_SPANS,
    HolderLists,
    HolderReport,
    ahead,
    covers,
    encode_list,
    encode_spans,
    holder_of,
    merge,
    named_to,
    parse_spans,
    read_list,
    whole_pieces,
)
from tests.support.clock import Clock

MIB = 1 << 20


def spans(*pairs: tuple[int, int]) -> tuple[Span, ...]:
    return tuple(Span(start, end) for start, end in pairs)


def test_spans_merge_and_go_on_the_wire_and_back() -> None:
    assert merge(spans((10, 20), (0, 5), (5, 8), (19, 30), (40, 40))) == spans((0, 8), (10, 30))
    text = encode_spans(spans((10, 20), (0, 5), (5, 8)))
    assert text == "0-8,10-20"
    assert parse_spans(text, size=20) == spans((0, 8), (10, 20))
    assert parse_spans("") == ()
    # At most MAX_SPANS go out: a holder with more says less than it has.
    many = [Span(i * 10, i * 10 + 5) for i in range(MAX_SPANS + 5)]
    assert len(parse_spans(encode_spans(many))) == MAX_SPANS


@pytest.mark.parametrize(
    "text",
    ["5-5", "9-3", "a-b", "1-", "-4", "1-2-3", "0-11", ",".join(["0-1"] * (MAX_SPANS + 1))],
)
def test_malformed_spans_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_spans(text, size=10)


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 200)), max_size=20))
def test_a_merge_holds_exactly_the_bytes_of_its_spans(items: list[tuple[int, int]]) -> None:
    given_spans = [Span(start, start + length) for start, length in items]
    merged = merge(given_spans)
    held = {b for s in given_spans for b in range(s.start, s.end)}
    assert {b for s in merged for b in range(s.start, s.end)} == held
    assert all(a.end < b.start for a, b in itertools.pairwise(merged))
    for span in given_spans:
        assert covers(merged, span.start, span.end)


def test_whole_pieces_and_what_a_report_offers() -> None:
    size = 10 * MIB + 123  # 11 pieces of 1 MiB, the last one short
    assert whole_pieces(spans((0, 3 * MIB + 5)), size, MIB) == frozenset(range(3))
    assert whole_pieces(spans((MIB - 1, 4 * MIB)), size, MIB) == frozenset({1, 2, 3})
    assert whole_pieces(spans((10 * MIB, size)), size, MIB) == frozenset({10})
    # Half of piece 2 is here and the rest is on its way: piece 2 is coming.
    holder = holder_of("h", spans((0, 2 * MIB + 7)), spans((2 * MIB + 7, 4 * MIB)), size, MIB)
    assert holder == policy.Holder("h", frozenset({0, 1}), frozenset({2, 3}))
    # What a lane brings next: only the first piece or so of each lane in flight.
    assert ahead(spans((0, 8 * MIB), (20 * MIB, 21 * MIB)), 4 * MIB) == spans(
        (0, 4 * MIB), (20 * MIB, 21 * MIB)
    )


def test_holder_lists_keep_the_latest_report_per_node_newest_first() -> None:
    clock = Clock()
    lists = HolderLists(clock=clock)
    lists.report("d", HolderReport("a", spans((0, 5))))
    clock.now += 1
    lists.report("d", HolderReport("b"))
    clock.now += 1
    lists.report("d", HolderReport("a", spans((0, 9))))
    assert [(r.node, r.have) for r in lists.reports("d")] == [("a", spans((0, 9))), ("b", ())]
    lists.forget("d", "a")
    assert [r.node for r in lists.reports("d")] == ["b"]
    assert lists.reports("unknown") == []


def test_holder_lists_are_bounded_and_their_entries_expire() -> None:
    clock = Clock()
    lists = HolderLists(digests=3, per_digest=2, ttl=10.0, clock=clock)
    for n in range(5):
        lists.report("d", HolderReport(f"n{n}"))
    # The two most recent holders stay.
    assert [r.node for r in lists.reports("d")] == ["n4", "n3"]
    for d in range(5):
        lists.report(f"x{d}", HolderReport("n"))
    assert len(lists) == 3
    assert lists.reports("d") == [] and lists.reports("x0") == []
    clock.now += 11
    lists.report("x4", HolderReport("fresh"))
    assert [r.node for r in lists.reports("x4")] == ["fresh"]
    # Lists whose newest report expired go at the next report of any digest.
    assert len(lists) == 1 and lists.reports("x3") == []
    clock.now += 5
    lists.report("y", HolderReport("n"))
    assert len(lists) == 2
    # An expired report goes when its list is read.
    clock.now += 6
    assert lists.reports("x4") == [] and len(lists) == 1


def test_the_owner_names_itself_first_and_never_the_asker() -> None:
    reports = [HolderReport(f"h{i}") for i in range(40)]
    owner = HolderReport("owner", spans((0, 100)))
    named = named_to(reports, "h7", owner, limit=16)
    assert named[0] is owner and len(named) == 16
    assert "h7" not in {r.node for r in named}
    # A stale report of the owner itself is replaced by its own progress.
    again = named_to([*reports, HolderReport("owner")], "h7", owner, limit=16)
    assert again[0] is owner and [r.node for r in again].count("owner") == 1


def test_an_answer_goes_on_the_wire_as_the_reports_came() -> None:
    came = HolderReport.parse("http://a:5000", "0-10,20-30", "10-20", size=100)
    assert came.have == spans((0, 10), (20, 30)) and came.texts() == ("0-10,20-30", "10-20")
    body = encode_list(100, [HolderReport("http://o:5000", spans((0, 100))), came])
    size, holders = read_list(body)
    assert size == 100
    assert holders == [("http://o:5000", "0-100", ""), ("http://a:5000", "0-10,20-30", "10-20")]
    assert read_list(encode_list(None, [])) == (None, [])


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"size": -1, "holders": []},
        {"size": "5", "holders": []},
        {"size": 5},
        {"size": 5, "holders": [{"node": 5}]},
        {"size": 5, "holders": ["x"]},
    ],
)
def test_a_malformed_answer_is_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        read_list(json.dumps(doc).encode())


def test_uploads_are_bounded_and_small_ranges_always_go() -> None:
    uploads = Uploads(slots=2)
    assert uploads.take(4 * MIB) and uploads.take(4 * MIB)
    assert not uploads.take(4 * MIB) and uploads.refused == 1
    # A small range takes no slot and is never refused.
    assert uploads.take(SMALL_RANGE) and uploads.serving == 2
    uploads.give(SMALL_RANGE)
    assert uploads.serving == 2
    uploads.give(4 * MIB)
    assert uploads.take(4 * MIB) and uploads.admitted == 3
    # Pieces of 1 MiB: a whole piece always takes a slot, whatever the size.
    fine = Uploads(slots=1, small=MIB // 4)
    assert fine.take(MIB) and not fine.take(MIB) and fine.take(MIB // 4)
    # No bound at all: the owner-only star.
    star = Uploads(slots=None)
    assert all(star.take(4 * MIB) for _ in range(100))
