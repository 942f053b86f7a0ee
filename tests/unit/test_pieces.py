from __future__ import annotations

import collections

from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.blobs.segments import Span
from cacheproxy.swarm.policy import (
    Asking,
    Holder,
    Request,
    admit,
    listed,
    owner_only,
    piece_count,
    pieces_below,
    plan,
    span,
)

MIB = 1 << 20
SIZE = 10 * MIB + 123  # 11 pieces of 1 MiB, the last one short
PIECE = MIB
ALL = frozenset(range(piece_count(SIZE, PIECE)))


def asking(holders: tuple[Holder, ...], **kw: object) -> Asking:
    return Asking(me="me", size=SIZE, holders=holders, piece_size=PIECE, **kw)


def request(node: str, piece: int) -> Request:
    """A request of ``node`` for the whole of ``piece``."""
    bytes_of = span(piece, SIZE, PIECE)
    return Request(node, piece, bytes_of.start, bytes_of.end)


def test_pieces_and_spans() -> None:
    assert piece_count(SIZE, PIECE) == 11
    assert span(0, SIZE, PIECE) == Span(0, MIB)
    assert span(10, SIZE, PIECE) == Span(10 * MIB, SIZE)
    assert piece_count(0, PIECE) == 0
    assert pieces_below(3 * MIB + 5, SIZE, PIECE) == frozenset(range(3))
    assert pieces_below(SIZE, SIZE, PIECE) == ALL


def test_takes_from_several_holders_at_once_one_request_each() -> None:
    holders = tuple(Holder(f"h{i}", have=ALL) for i in range(6))
    out = plan(asking(holders, max_sources=4))
    assert len(out) == 4
    assert len({r.node for r in out}) == 4
    assert len({r.piece for r in out}) == 4
    for r in out:
        assert Span(r.start, r.end) == span(r.piece, SIZE, PIECE)


def test_never_asks_itself_an_avoided_holder_or_one_already_sending() -> None:
    holders = (Holder("me", have=ALL), Holder("a", have=ALL), Holder("b", have=ALL))
    holders += (Holder("c", have=ALL),)
    flying = (request("a", 0),)
    out = plan(asking(holders, in_flight=flying, avoid=frozenset({"b"}), max_sources=4))
    assert [r.node for r in out] == ["c"]
    assert out[0].piece != 0


def test_asks_nothing_when_done_full_or_nobody_offers() -> None:
    holder = (Holder("a", have=ALL),)
    assert plan(asking(holder, have=ALL)) == []
    flying = tuple(request(f"x{i}", i) for i in range(4))
    assert plan(asking(holder, in_flight=flying, max_sources=4)) == []
    assert plan(asking((Holder("a"),))) == []
    assert plan(asking((Holder("a", have=frozenset({0})),), have=frozenset({0}))) == []


def test_rarest_piece_first_then_one_the_holder_has_over_one_it_is_receiving() -> None:
    common = frozenset({0, 1, 2})
    holders = (
        Holder("a", have=common | {5}),
        Holder("b", have=common),
        Holder("c", have=common),
    )
    first = plan(asking(holders, max_sources=1))
    assert first == [request("a", 5)]
    # Equally rare: the holder that has piece 3 beats the one still receiving piece 4.
    holders = (Holder("a", coming=frozenset({4})), Holder("b", have=frozenset({3})))
    assert [r.piece for r in plan(asking(holders, max_sources=1))] == [3]
    # A piece that is still coming is asked for (tailing) when nothing else is offered.
    assert [r.piece for r in plan(asking(holders[:1], max_sources=1))] == [4]


def test_askers_of_the_same_holders_spread_over_pieces_and_holders() -> None:
    holders = tuple(Holder(f"h{i}", have=ALL) for i in range(8))
    firsts = [
        plan(Asking(f"node{k}", SIZE, holders, piece_size=PIECE, max_sources=1))[0]
        for k in range(200)
    ]
    by_holder = collections.Counter(r.node for r in firsts)
    by_piece = collections.Counter(r.piece for r in firsts)
    assert len(by_holder) == 8 and max(by_holder.values()) < 60
    assert len(by_piece) == 11 and max(by_piece.values()) < 50
    # ... and the same asker plans the same way every time (no hidden state).
    again = plan(Asking("node7", SIZE, holders, piece_size=PIECE, max_sources=1))
    assert again == [firsts[7]]


def test_admit_bounds_uploads_and_owner_only_does_not() -> None:
    assert admit(0, 4) and admit(3, 4) and not admit(4, 4)
    assert admit(10_000, None)


def test_owner_only_is_the_whole_blob_from_the_owner() -> None:
    owner = Holder("owner", coming=frozenset({0}))
    out = plan(owner_only("me", owner, SIZE))
    assert out == [Request("owner", 0, 0, SIZE)]
    assert plan(owner_only("me", owner, SIZE, in_flight=out)) == []


def test_the_owner_names_itself_first_and_a_bounded_per_asker_sample() -> None:
    holders = [Holder(f"h{i}") for i in range(100)] + [Holder("owner")]
    one = listed(holders, "h3", "owner", limit=16)
    assert len(one) == 16 and one[0].node == "owner"
    assert "h3" not in {h.node for h in one}
    assert listed(list(reversed(holders)), "h3", "owner", limit=16) == one
    other = listed(holders, "h4", "owner", limit=16)
    assert {h.node for h in one[1:]} != {h.node for h in other[1:]}
    # Over many askers every holder is named about as often (the load spreads).
    named = collections.Counter(
        h.node for k in range(100) for h in listed(holders, f"h{k}", "owner", 16)[1:]
    )
    assert len(named) == 100 and max(named.values()) < 40


def test_a_swarm_driven_by_the_plan_gets_every_piece_exactly_once() -> None:
    """Five nodes, one owner with the blob: each round, every node plans and gets what
    it asked for; every node ends with every piece, asking no piece twice."""
    nodes = [f"n{i}" for i in range(5)]
    have = {n: set[int]() for n in nodes}
    have["n0"] = set(ALL)
    asked = collections.Counter[tuple[str, int]]()
    for _ in range(40):
        holders = tuple(Holder(n, have=frozenset(have[n])) for n in nodes)
        got = {
            n: plan(Asking(n, SIZE, holders, frozenset(have[n]), piece_size=PIECE)) for n in nodes
        }
        for n, requests in got.items():
            for r in requests:
                assert r.piece in have[r.node]
                asked[(n, r.piece)] += 1
                have[n].add(r.piece)
    assert all(have[n] == ALL for n in nodes)
    assert max(asked.values()) == 1


@st.composite
def situations(draw: st.DrawFn) -> Asking:
    count = piece_count(SIZE, PIECE)
    piece_sets = st.frozensets(st.integers(0, count + 2), max_size=count)
    holders = tuple(
        Holder(f"h{i}", have=draw(piece_sets), coming=draw(piece_sets))
        for i in range(draw(st.integers(0, 6)))
    )
    have = draw(st.frozensets(st.integers(0, count - 1), max_size=count))
    free = sorted(set(range(count)) - have)
    flying_pieces = draw(st.lists(st.sampled_from(free), unique=True, max_size=3)) if free else []
    in_flight = tuple(request(f"h{i}", p) for i, p in enumerate(flying_pieces))
    avoid = frozenset(draw(st.lists(st.sampled_from([f"h{i}" for i in range(6)]), max_size=3)))
    return asking(
        holders,
        have=have,
        in_flight=in_flight,
        avoid=avoid,
        max_sources=draw(st.integers(1, 5)),
    )


@given(situations())
def test_every_plan_keeps_the_rules(situation: Asking) -> None:
    out = plan(situation)
    offers = {h.node: h.offers() for h in situation.holders}
    flying = {r.piece for r in situation.in_flight}
    sending = {r.node for r in situation.in_flight}
    assert len(out) <= max(0, situation.max_sources - len(situation.in_flight))
    assert len({r.node for r in out}) == len(out)
    assert len({r.piece for r in out}) == len(out)
    for r in out:
        assert r.node not in situation.avoid and r.node not in sending
        assert r.piece in offers[r.node]
        assert r.piece not in situation.have and r.piece not in flying
        assert Span(r.start, r.end) == span(r.piece, SIZE, PIECE) and r.end <= SIZE
    # Nothing asked only when nothing askable is left (the plan never idles needlessly).
    usable = [
        h for h in situation.holders if h.node not in situation.avoid and h.node not in sending
    ]
    wanted = set(range(piece_count(SIZE, PIECE))) - situation.have - flying
    free = situation.max_sources - len(situation.in_flight)
    if free > 0 and any(h.offers() & wanted for h in usable):
        assert out


def test_pieces_near_the_first_one_missing_go_first() -> None:
    """The digest, and the readers, follow the blob in order: far pieces wait."""
    size = 40 * MIB
    count = piece_count(size, PIECE)
    everything = frozenset(range(count))
    holders = tuple(Holder(f"h{i}", have=everything) for i in range(4))
    have = frozenset(range(10))
    for k in range(50):
        out = plan(Asking(f"n{k}", size, holders, have, piece_size=PIECE, window=8))
        assert out and all(10 <= r.piece < 18 for r in out)
    # Nothing near offered: a piece further on is better than an idle source.
    far = (Holder("h0", have=frozenset({30, 31})),)
    assert [r.piece for r in plan(Asking("n", size, far, have, piece_size=PIECE, window=8))] in (
        [30],
        [31],
    )
    # Inside the window the rarest still go first: piece 12 only h9 has.
    lacking = tuple(Holder(f"h{i}", have=everything - {12}) for i in range(4))
    rare = (*lacking, Holder("h9", have=frozenset({12})))
    out = plan(Asking("n", size, rare, have, piece_size=PIECE, window=8, max_sources=1))
    assert [(r.node, r.piece) for r in out] == [("h9", 12)]
