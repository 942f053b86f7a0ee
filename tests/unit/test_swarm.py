"""The asking side of the swarm (swarm/asker.py, swarm/feed.py, swarm/memory.py) on a fake cluster:
which holder is asked for which bytes, and what busy, gone and wrong holders cost."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from cacheproxy.blobs.segments import Span
from cacheproxy.blobs.source import Progress, Want
from cacheproxy.errors import UpstreamUnavailable
from cacheproxy.oci import parse_digest
from cacheproxy.peers.cluster import Cluster, PeerStats
from cacheproxy.swarm.asker import MAX_FAILURES, Asker
from cacheproxy.swarm.feed import Busy, HolderFeed, NotHeld
from cacheproxy.swarm.lists import HolderReport, encode_list
from cacheproxy.swarm.memory import BUSY_PAUSE
from cacheproxy.swarm.node import SwarmNode
from tests.support.clock import Clock
from tests.support.waiting import eventually

MIB = 1 << 20
SIZE = 10 * MIB
OWNER = "http://owner:5000"
ME = "http://me:5000"


class Content:
    def __init__(self, body: bytes) -> None:
        self._body = body

    async def readexactly(self, n: int) -> bytes:
        return self._body[:n]


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_length(self) -> int:
        return len(self.body)

    @property
    def content(self) -> Content:
        return Content(self.body)

    def release(self) -> None:
        return None


class Membership:
    def __init__(self, healthy: set[str]) -> None:
        self.healthy = healthy

    def peers(self) -> list[str]:
        return sorted(self.healthy)

    def mark_bad(self, url: str, reason: str) -> None:
        self.healthy.discard(url)


class FakeCluster:
    """Answers holder lists with ``holders`` (signed unless told not to), and records
    every request; a node in ``down`` is unreachable, as Cluster.get reports it."""

    self_url = ME
    read_timeout = 5.0

    def __init__(self, holders: list[HolderReport], healthy: set[str]) -> None:
        self.holders = holders
        self.membership = Membership(healthy)
        self.stats = PeerStats()
        self.down: set[str] = set()
        self.signed = True
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.pieces: Callable[[str], Response] = lambda node: Response(206)

    async def get(
        self,
        peer: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        blob: bool = False,
    ) -> Response:
        self.requests.append((peer, path, dict(query)))
        if peer in self.down:
            self.membership.mark_bad(peer, "unreachable")
            raise UpstreamUnavailable(f"peer {peer} unreachable")
        if path.startswith("/holding/"):
            return Response(200, encode_list(SIZE, self.holders))
        return self.pieces(peer)

    def signed_answer(self, resp: Response, fields: list[str]) -> bool:
        return self.signed and fields[1] == hashlib.sha256(resp.body).hexdigest()

    def reports(self) -> list[dict[str, str]]:
        return [q for _, path, q in self.requests if path.startswith("/holding/")]


#: Lanes with nothing on disk and nothing asked for.
NOTHING = Progress()


def want(n: int = 0) -> Want:
    digest = parse_digest("sha256:" + hashlib.sha256(str(n).encode()).hexdigest())
    return Want(cast(Any, SimpleNamespace(name="registry.test")), "app", digest)


def whole(node: str) -> HolderReport:
    return HolderReport(node, (Span(0, SIZE),))


@dataclass
class Rig:
    cluster: FakeCluster
    node: SwarmNode
    clock: Clock
    swarms: list[Asker] = field(default_factory=list)

    def join(self, n: int = 0) -> Asker:
        swarm = self.node.join(want(n), OWNER)
        assert swarm is not None
        self.swarms.append(swarm)
        return swarm

    async def swarm(self, n: int = 0) -> Asker:
        swarm = self.join(n)
        assert await swarm.start() == SIZE
        return swarm


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    holders = [HolderReport(OWNER), whole("http://a:5000"), whole("http://b:5000")]
    cluster = FakeCluster(holders, {OWNER, "http://a:5000", "http://b:5000", "http://c:5000"})
    clock = Clock(100.0)
    node = SwarmNode(cast(Cluster, cluster), piece_size=MIB, max_sources=3, clock=clock)
    made = Rig(cluster, node, clock)
    yield made
    for swarm in made.swarms:
        await swarm.close()


def asked(plan: list[tuple[Any, Span]]) -> list[tuple[str, int, int]]:
    return sorted((feed.node, span.start, span.end) for feed, span in plan)


async def test_only_missing_bytes_are_asked_one_holder_each(rig: Rig) -> None:
    # Piece 1 is half here, pieces 2-6 and 8-9 are asked already: pieces 1 and 7 are left.
    flying = [Span(2 * MIB, 7 * MIB), Span(8 * MIB, SIZE)]
    progress = Progress(have=[Span(0, MIB + MIB // 2)], coming=flying, asked=flying)
    swarm = await rig.swarm()
    plan = swarm.plan(SIZE, progress)
    spans = sorted((span.start, span.end) for _, span in plan)
    assert spans == [(MIB + MIB // 2, 2 * MIB), (7 * MIB, 8 * MIB)]
    nodes = [feed.node for feed, _ in plan]
    assert len(set(nodes)) == 2 and set(nodes) <= {"http://a:5000", "http://b:5000"}
    assert all(isinstance(feed, HolderFeed) for feed, _ in plan)
    # Nothing more to ask while those are on their way.
    assert swarm.plan(SIZE, progress) == []


async def test_a_busy_holder_is_left_alone_by_every_fill_of_the_node(rig: Rig) -> None:
    rig.cluster.holders = [HolderReport(OWNER), whole("http://a:5000")]
    first = await rig.swarm()
    second = await rig.swarm(n=1)
    ((feed, _),) = first.plan(SIZE, NOTHING)
    assert first.ended(feed, Busy("http://a:5000"))
    assert first.plan(SIZE, NOTHING) == [] and second.plan(SIZE, NOTHING) == []
    rig.clock.now += BUSY_PAUSE * 1.01
    assert [f.node for f, _ in second.plan(SIZE, NOTHING)] == ["http://a:5000"]
    # Refused again: left alone twice as long.
    ((feed, _),) = first.plan(SIZE, NOTHING)
    first.ended(feed, Busy("http://a:5000"))
    rig.clock.now += BUSY_PAUSE * 1.5
    assert first.plan(SIZE, NOTHING) == []
    rig.clock.now += BUSY_PAUSE
    assert len(first.plan(SIZE, NOTHING)) == 1
    assert rig.cluster.stats.busy == 2


async def test_unhealthy_holders_and_this_node_are_never_asked(rig: Rig) -> None:
    rig.cluster.holders = [
        HolderReport(OWNER),
        whole("http://a:5000"),
        whole(ME),
        whole("http://x:1"),
    ]
    rig.cluster.membership.healthy.discard("http://a:5000")
    swarm = await rig.swarm()
    assert swarm.plan(SIZE, NOTHING) == []  # a is avoided, x is no member, the owner has nothing


async def test_a_holder_that_fails_a_piece_is_replaced_and_the_rest_asked_again(rig: Rig) -> None:
    rig.cluster.holders = [whole(OWNER), whole("http://a:5000")]
    swarm = await rig.swarm()
    plan = swarm.plan(SIZE, NOTHING)
    by_node = {feed.node: (feed, span) for feed, span in plan}
    feed, _span = by_node["http://a:5000"]
    assert swarm.ended(feed, TimeoutError())
    again = swarm.plan(SIZE, NOTHING)
    # a sits out; the owner is busy with its own request, so nothing else to ask yet.
    assert again == []
    owner_feed, _ = by_node[OWNER]
    swarm.ended(owner_feed, None)
    ((next_feed, _next_span),) = swarm.plan(SIZE, NOTHING)
    assert next_feed.node == OWNER
    assert not swarm.ended(HolderFeed(cast(Cluster, rig.cluster), "http://a:5000", want()), None)


async def test_a_tail_of_a_tail_is_not_offered_on(rig: Rig) -> None:
    """Bytes asked of a holder still receiving them are reported once they landed:
    tails stay two deep, and two nodes never wait on each other for the same bytes."""
    rig.cluster.holders = [HolderReport(OWNER), HolderReport("http://a:5000", (), (Span(0, MIB),))]
    swarm = await rig.swarm()
    ((feed, span),) = swarm.plan(SIZE, NOTHING)
    assert (feed.node, span.start, span.end) == ("http://a:5000", 0, MIB)
    # Its answer came: the lane is on its way, as the lanes tell at their next plan.
    assert swarm.plan(SIZE, Progress(coming=[span], asked=[span])) == []
    # The next report comes every REFRESH seconds.
    await eventually(lambda: len(rig.cluster.reports()) >= 2, timeout=5, what="the next report")
    assert rig.cluster.reports()[-1]["coming"] == ""


async def test_the_owner_gone_leaves_what_holders_have_and_the_feed(rig: Rig) -> None:
    rig.cluster.holders = [
        HolderReport(OWNER, (), (Span(0, SIZE),)),
        HolderReport("http://a:5000", (Span(0, 2 * MIB),), (Span(2 * MIB, 3 * MIB),)),
    ]
    swarm = await rig.swarm()
    for feed, _ in swarm.plan(SIZE, NOTHING):
        swarm.ended(feed, None)
    assert swarm.sole
    rig.cluster.down.add(OWNER)
    await eventually(lambda: not swarm.sole, timeout=5, what="the next list asked for, failing")
    assert swarm.live and rig.cluster.stats.swarm_fallbacks == 1
    # What a holder has is still asked of it; what it had coming (maybe from the owner)
    # and the owner itself are not: the fill's feed takes the rest.
    spans = asked(swarm.plan(SIZE, NOTHING))
    assert spans and all(node == "http://a:5000" and end <= 2 * MIB for node, _, end in spans)


@pytest.mark.parametrize("fault", ["down", "unsigned"])
async def test_no_swarm_without_a_signed_list_from_the_owner(rig: Rig, fault: str) -> None:
    if fault == "down":
        rig.cluster.down.add(OWNER)
    else:
        rig.cluster.signed = False
    swarm = rig.join()
    assert await swarm.start() is None
    assert not swarm.live and not swarm.sole and swarm.plan(SIZE, NOTHING) == []


async def test_wrong_bytes_leave_the_senders_out_and_the_next_fill_to_the_owner(rig: Rig) -> None:
    swarm = await rig.swarm()
    assert not swarm.blame()  # nobody sent anything: the feed answers for it
    for feed, _ in swarm.plan(SIZE, NOTHING):
        swarm.ended(feed, None)
    assert swarm.blame()
    assert rig.node.join(want(0), OWNER) is None and rig.node.memory.alone(want(0))
    assert not rig.node.memory.alone(want(1))
    assert rig.node.memory.suspects.current() == {"http://a:5000", "http://b:5000"}
    later = await rig.swarm(n=1)
    assert later.plan(SIZE, NOTHING) == []  # the only holders with bytes are suspects


async def test_too_many_failed_pieces_end_the_swarm(rig: Rig) -> None:
    swarm = await rig.swarm()
    feed = HolderFeed(cast(Cluster, rig.cluster), "http://a:5000", want())
    swarm._feeds["http://a:5000"] = feed  # as if it had been asked
    for _ in range(MAX_FAILURES + 1):
        swarm.ended(feed, ConnectionResetError())
    assert not swarm.live and swarm.plan(SIZE, NOTHING) == []


@pytest.mark.parametrize(
    ("status", "raised"),
    [(429, Busy), (404, NotHeld), (416, NotHeld), (503, UpstreamUnavailable)],
)
async def test_a_holder_feed_reads_the_answer(
    rig: Rig, status: int, raised: type[Exception]
) -> None:
    rig.cluster.pieces = lambda node: Response(status)
    feed = HolderFeed(cast(Cluster, rig.cluster), "http://a:5000", want())
    with pytest.raises(raised):
        await feed.open(0, MIB - 1)
    rig.cluster.pieces = lambda node: Response(206)
    assert (await feed.open(0, MIB - 1)).status == 206
    _, path, query = rig.cluster.requests[-1]
    assert path == f"/pieces/{want().digest}"
    assert query == {"upstream": "registry.test", "repo": "app", "node": ME}


async def test_an_owner_that_leaves_the_cluster_leaves_the_rest_to_the_feed(rig: Rig) -> None:
    """It still answers its lists, but it is no member now: waiting on it for pieces
    nobody else offers would wait for nothing."""
    rig.cluster.holders = [HolderReport(OWNER, (), (Span(0, SIZE),))]
    swarm = await rig.swarm()
    rig.cluster.membership.healthy.discard(OWNER)
    assert swarm.plan(SIZE, NOTHING) == []
    assert swarm.live and not swarm.sole


async def test_no_byte_for_a_long_while_leaves_the_rest_to_the_feed(rig: Rig) -> None:
    rig.cluster.holders = [HolderReport(OWNER)]  # it answers, but never has anything
    swarm = await rig.swarm()
    assert swarm.plan(SIZE, NOTHING) == [] and swarm.sole
    rig.clock.now += 4 * rig.cluster.read_timeout
    # A fresh list (every REFRESH s) makes it look again.
    await eventually(lambda: len(rig.cluster.reports()) >= 2, timeout=5, what="a fresh list")
    swarm.plan(SIZE, NOTHING)
    assert swarm.live and not swarm.sole
