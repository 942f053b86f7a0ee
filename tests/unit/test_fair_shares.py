"""Fair shares of the fill slots: the gate's policy, then preemption through the
registry of fills with scripted feeds. No network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import cast

import pytest

from cacheproxy.blobs.admission import ABANDON_GRACE, FillGate, FillLimits
from cacheproxy.blobs.disk import DiskBudget
from cacheproxy.blobs.fillstate import FillState
from cacheproxy.blobs.inflight import Fills, InFlight
from cacheproxy.blobs.source import Body, Feed, Want
from cacheproxy.errors import TooManyRequests, UpstreamUnavailable
from cacheproxy.oci import Digest
from cacheproxy.sizes import DiskSpace
from cacheproxy.store.files import BlobStore
from cacheproxy.upstream.client import Upstream
from tests.support.images import digest_of
from tests.support.waiting import eventually
from tests.unit.test_fill import EOF, Answer, FakeFeed, live

# --- the gate ----------------------------------------------------------------------


async def settle() -> None:
    """Let every task that can run do so (a bounded number of loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


def gate_of(
    running: int = 4,
    queued: int = 16,
    per_client: int = 8,
    grace: float = ABANDON_GRACE,
    clock: Callable[[], float] = time.monotonic,
) -> FillGate:
    return FillGate(FillLimits(running, queued, per_client, grace), clock)


async def test_a_waiting_slot_goes_to_the_client_holding_fewest_not_the_first() -> None:
    gate = gate_of(running=5)  # one slot of the reserve stays free
    held = [await gate.enter("greedy") for _ in range(3)]
    held.append(await gate.enter("modest"))
    greedy = [asyncio.create_task(gate.enter("greedy")) for _ in range(3)]
    await settle()
    modest = asyncio.create_task(gate.enter("modest"))
    await settle()
    assert gate.waiting == 4
    gate.leave(held[0])  # a greedy fill ends: its slot goes to modest (1 held), not greedy (2)
    await settle()
    assert modest.done() and not any(t.done() for t in greedy)
    assert gate.holding("modest") == 2
    gate.leave(held[1])
    await settle()
    assert sum(t.done() for t in greedy) == 1
    for task in greedy:
        task.cancel()
    await asyncio.gather(*greedy, return_exceptions=True)
    assert gate.waiting == 0


async def test_equals_are_served_round_robin() -> None:
    gate = gate_of(running=1, per_client=8)
    first = await gate.enter("x")
    order: list[str] = []

    async def ask(client: str) -> None:
        slot = await gate.enter(client)
        order.append(client)
        gate.leave(slot)

    # Both hold nothing: a and b alternate, whatever the order they asked in.
    tasks = [asyncio.create_task(ask(c)) for c in ("a", "a", "a", "b", "b", "b")]
    await settle()
    gate.leave(first)
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "a", "b", "a", "b"]


async def test_a_client_may_have_per_client_running_or_waiting() -> None:
    gate = gate_of(running=3, queued=16, per_client=3)
    slots = [await gate.enter("c"), await gate.enter("c")]
    waiter = asyncio.create_task(gate.enter("c"))
    await settle()
    with pytest.raises(TooManyRequests) as caught:
        await gate.enter("c")
    assert caught.value.headers == {"Retry-After": "1"}
    assert gate.stats.refused["per_client"] == 1
    # Another client is not bounded by it, and takes the reserve at once.
    other = await gate.enter("d")
    assert gate.waiting == 1 and not waiter.done()
    for slot in slots:
        gate.leave(slot)
    await settle()
    assert waiter.done()
    gate.leave(other)


async def test_a_slot_is_kept_for_a_client_running_nothing() -> None:
    """Clients that keep reading their fills cannot take the reserve: a newcomer
    starts at once, and the reserve is free again when its fill ends."""
    gate = gate_of(running=8, queued=16, per_client=8)  # a reserve of one
    assert gate._limits.reserve == 1
    held = [await gate.enter("stranger") for _ in range(7)]
    more = asyncio.create_task(gate.enter("stranger"))
    await settle()
    assert not more.done() and gate.waiting == 1
    newcomer = await gate.enter("newcomer")
    with_one = asyncio.create_task(gate.enter("newcomer"))  # it runs one now
    await settle()
    assert not with_one.done()
    gate.leave(newcomer)
    await settle()
    assert with_one.done() and not more.done()  # it ran nothing again: the reserve
    gate.leave(held[0])
    await settle()
    assert not more.done()  # the one free slot is the reserve
    gate.leave(with_one.result())
    await settle()
    assert more.done()  # one beyond the reserve: the stranger's turn
    for slot in (*held[1:], more.result()):
        gate.leave(slot)
    assert gate.waiting == 0


async def test_while_others_wait_a_client_running_past_its_part_asks_for_no_more() -> None:
    gate = gate_of(running=9, queued=16, per_client=16)  # a reserve of one
    greedy = [await gate.enter("a") for _ in range(8)]
    more = asyncio.create_task(gate.enter("a"))  # nobody else waits: it may
    await settle()
    reserve = await gate.enter("b")
    late = asyncio.create_task(gate.enter("c"))
    await settle()
    assert gate.waiting == 2
    # c waits: a's part is now about (9 - 1) / 3 slots, and it runs 8.
    with pytest.raises(TooManyRequests):
        await gate.enter("a")
    assert gate.stats.refused["per_client"] == 1
    # b runs 1, less than its part: it may ask (and waits).
    b_more = asyncio.create_task(gate.enter("b"))
    await settle()
    assert gate.waiting == 3
    gate.leave(greedy[0])
    await settle()
    assert late.done() and not more.done() and not b_more.done()
    for task in (more, b_more):
        task.cancel()
    await asyncio.gather(more, b_more, return_exceptions=True)
    for slot in (*greedy[1:], reserve, late.result()):
        gate.leave(slot)
    assert gate.waiting == 0


async def test_a_full_queue_is_shared_a_client_with_less_takes_a_place() -> None:
    gate = gate_of(running=3, queued=4, per_client=4)
    slots = [await gate.enter("a"), await gate.enter("a")]
    reserve = await gate.enter("x")
    greedy = [asyncio.create_task(gate.enter("b")) for _ in range(3)]
    peer = asyncio.create_task(gate.enter(""))
    await settle()
    assert gate.waiting == 4
    # The node's own request, or a client with as much as b, is refused; c (nothing)
    # takes the place of b's newest request.
    with pytest.raises(TooManyRequests):
        await gate.enter("")
    assert gate.stats.refused["queue"] == 1
    modest = asyncio.create_task(gate.enter("c"))
    await settle()
    assert greedy[2].done()
    with pytest.raises(TooManyRequests) as caught:
        greedy[2].result()
    assert caught.value.headers == {"Retry-After": "1"}
    assert gate.stats.refused["fair_share"] == 1
    # b (2 waiting) and c (1 waiting): b has no more than c would with one more.
    with pytest.raises(TooManyRequests):
        await gate.enter("c")
    # Slots free: b, the node's own, c in turn (each holds nothing), b again last.
    gate.leave(slots[0])
    await settle()
    assert greedy[0].done() and not peer.done()
    gate.leave(slots[1])
    await settle()
    assert peer.done() and not modest.done()
    gate.leave(greedy[0].result())
    await settle()
    assert modest.done() and not greedy[1].done()
    greedy[1].cancel()
    await asyncio.gather(greedy[1], return_exceptions=True)
    assert gate.waiting == 0
    gate.leave(reserve)


async def test_the_whole_queue_is_bounded() -> None:
    gate = gate_of(running=1, queued=2, per_client=8)
    slot = await gate.enter("a")
    waiters = [asyncio.create_task(gate.enter(c)) for c in ("b", "")]
    await settle()
    with pytest.raises(TooManyRequests):
        await gate.enter("")
    with pytest.raises(TooManyRequests):
        await gate.enter("d")
    assert gate.stats.refused["queue"] == 2
    gate.leave(slot)
    await settle()
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_the_nodes_own_fills_are_not_bounded_per_client() -> None:
    gate = gate_of(running=3, queued=16, per_client=1)
    slots = [await gate.enter("") for _ in range(3)]
    assert gate.holding("") == 0
    waiter = asyncio.create_task(gate.enter(""))
    await settle()
    gate.leave(slots[0])
    await settle()
    assert waiter.done()


async def test_an_abandoned_slot_stops_counting_and_goes_to_the_next_waiter() -> None:
    gate = gate_of(running=3, queued=16, per_client=2, grace=0)
    cancelled: list[str] = []
    a1, a2 = await gate.enter("a"), await gate.enter("a")
    reserve = await gate.enter("x")
    with pytest.raises(TooManyRequests):
        await gate.enter("a")
    gate.abandon(a1, lambda: cancelled.append("a1"))
    assert gate.holding("a") == 1 and gate.abandoned == 1
    # A fill someone joins again counts (and is not cancelled for a waiter, below).
    gate.abandon(a2, lambda: cancelled.append("a2"))
    gate.rejoin(a2)
    assert gate.holding("a") == 1 and gate.abandoned == 1
    # a may ask again (the abandoned fill is not its share); it runs one, so a1's slot
    # stands for the reserve, and b, running nothing, takes it.
    again = asyncio.create_task(gate.enter("a"))
    await settle()
    assert not again.done() and not cancelled
    b = await gate.enter("b")
    assert cancelled == ["a1"] and a1.released
    assert gate.stats.preempted == 1
    c = asyncio.create_task(gate.enter("c"))
    await settle()
    assert not c.done() and cancelled == ["a1"]
    # Abandoned while someone waits: cancelled for the waiter at once (a runs
    # nothing now, and asked first).
    gate.abandon(a2, lambda: cancelled.append("a2"))
    await settle()
    assert again.done() and not c.done() and cancelled == ["a1", "a2"]
    gate.leave(a2)  # its fill's end, later: nothing more to give back
    gate.leave(reserve)
    await settle()
    assert c.done()
    for slot in (again.result(), b, c.result()):
        gate.leave(slot)
    assert gate.waiting == 0 and gate.abandoned == 0


async def test_an_abandoned_fill_keeps_its_slot_for_the_grace_and_while_peers_name_it() -> None:
    now = [0.0]
    gate = gate_of(running=1, queued=16, per_client=4, grace=10, clock=lambda: now[0])
    cancelled: list[str] = []
    owner = await gate.enter("peer http://10.0.0.2:5000")
    gate.abandon(owner, lambda: cancelled.append("owner"))
    stranger = asyncio.create_task(gate.enter("stranger"))
    await settle()
    assert not stranger.done()
    now[0] = 6.0
    gate.named(owner)  # a holder list, a piece request
    now[0] = 12.0
    other = asyncio.create_task(gate.enter("other"))  # a dispatch: still in its grace
    await settle()
    assert not stranger.done() and not other.done() and not cancelled
    now[0] = 16.5
    late = asyncio.create_task(gate.enter("late"))  # a dispatch: the grace is over
    await settle()
    assert stranger.done() and cancelled == ["owner"]
    for task in (other, late):
        task.cancel()
    await asyncio.gather(other, late, return_exceptions=True)
    gate.leave(stranger.result())
    gate.close()


async def test_a_waiter_is_served_when_the_grace_ends() -> None:
    gate = gate_of(running=1, queued=16, per_client=4, grace=0.2)
    cancelled: list[str] = []
    slot = await gate.enter("a")
    gate.abandon(slot, lambda: cancelled.append("a"))
    waiter = asyncio.create_task(gate.enter("b"))
    await settle()
    assert not waiter.done()
    async with asyncio.timeout(10):  # nothing else happens: the gate's timer
        served = await waiter
    assert cancelled == ["a"]
    gate.leave(served)
    gate.close()


async def test_a_fill_fed_by_peers_is_preempted_first() -> None:
    gate = gate_of(running=3, queued=16, per_client=4, grace=0)
    cancelled: list[str] = []
    old, fed = await gate.enter("a"), await gate.enter("a")
    await gate.enter("x")  # the reserve
    gate.abandon(old, lambda: cancelled.append("old"))
    gate.abandon(fed, lambda: cancelled.append("peer-fed"), cheap=True)
    slot = await gate.enter("b")
    assert cancelled == ["peer-fed"]
    gate.leave(slot)


async def test_a_waiter_that_gives_up_leaves_nothing_behind() -> None:
    gate = gate_of(running=1)
    slot = await gate.enter("a")
    gone = asyncio.create_task(gate.enter("b"))
    await settle()
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert gate.waiting == 0
    # Granted just as it gave up: the slot goes on to the next one.
    late = asyncio.create_task(gate.enter("c"))
    after = asyncio.create_task(gate.enter("d"))
    await settle()
    gate.leave(slot)
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    await settle()
    assert after.done()
    gate.leave(after.result())
    assert gate.holding("c") == gate.holding("d") == 0


async def test_a_closed_gate_hands_out_nothing() -> None:
    gate = gate_of(running=1)
    slot = await gate.enter("a")
    waiter = asyncio.create_task(gate.enter("b"))
    await settle()
    gate.close()
    with pytest.raises(UpstreamUnavailable):
        await waiter
    gate.leave(slot)  # a fill cancelled at shutdown: its slot starts nothing
    with pytest.raises(UpstreamUnavailable):
        await gate.enter("c")
    assert gate.waiting == 0


# --- preemption of a real fill -----------------------------------------------------

BIG = bytes(range(256)) * 4000  # 1,024,000 bytes
SMALL = b"small layer" * 100


class ScriptedRemote:
    """The links after the fills: each digest's answer, delivered as the test says."""

    def __init__(self) -> None:
        self.answers: dict[Digest, Answer] = {}

    def feed(self, want: Want) -> Feed:
        answer = self.answers[want.digest] = live(len(BIG if want.digest == BIGD else SMALL))
        return FakeFeed(answer)

    async def open(self, want: Want, first: int = 0) -> Body:
        raise AssertionError("nothing streams through here")

    async def size(self, want: Want) -> int:
        raise AssertionError("no HEAD here")


BIGD, SMALLD = digest_of(BIG), digest_of(SMALL)


async def test_an_abandoned_fill_is_cancelled_cleanly_for_a_waiting_client(
    store: BlobStore,
) -> None:
    remote = ScriptedRemote()
    fills = Fills(
        store,
        limits=FillLimits(running=1, queued=4, per_client=4, grace=0),
        budget=DiskBudget(10**9, ("0",), lambda: DiskSpace(10**12, 10**13)),
    )
    chain = InFlight(fills, remote, room=lambda: True)
    upstream = cast(Upstream, SimpleNamespace(name="docker.io", pins=0))
    stranger = Want(upstream, "app", BIGD, "address 127.0.0.2")
    body = await chain.open(stranger)
    fill = fills.running(stranger)
    assert fill is not None
    await fill.started()
    queue = remote.answers[BIGD].content.queue
    assert queue is not None
    await queue.put(BIG[:300_000])
    await eventually(lambda: fill.progress() >= 300_000, timeout=10, what="300,000 bytes in")
    assert (upstream.pins, fills.budget.reserved, len(list(store.tmp_dir.iterdir()))) == (
        1,
        len(BIG),
        1,
    )
    body.close()  # the stranger hangs up
    assert fills.gate.abandoned == 1
    # Another client's miss takes the slot at once: the abandoned fill is cancelled.
    async with asyncio.timeout(10):
        served = await chain.open(Want(upstream, "app", SMALLD, "address 127.0.0.9"))
    await eventually(
        lambda: upstream.pins == 1 and fill.state is FillState.FAILED,
        timeout=10,
        what="the abandoned fill cancelled",
    )
    assert fill.preempted and fills.gate.stats.preempted == 1
    assert fills.running(stranger) is None
    assert not store.exists(BIGD)
    small = fills.running(Want(upstream, "app", SMALLD))
    assert small is not None
    await small.started()
    # Only the small fill's reservation and temp file are left.
    assert fills.budget.reserved == len(SMALL)
    assert [p.name.split(".")[0] for p in store.tmp_dir.iterdir()] == [f"sha256-{SMALLD.hex}"]
    small_queue = remote.answers[SMALLD].content.queue
    assert small_queue is not None
    await small_queue.put(SMALL)
    await small_queue.put(EOF)
    async with asyncio.timeout(10):
        await small.wait_done()
    served.close()
    assert store.read(SMALLD) == SMALL
    await fills.close()


async def test_a_fill_joined_again_is_not_preempted(store: BlobStore) -> None:
    remote = ScriptedRemote()
    fills = Fills(store, limits=FillLimits(running=1, queued=4, per_client=4))
    chain = InFlight(fills, remote, room=lambda: True)
    upstream = cast(Upstream, SimpleNamespace(name="docker.io", pins=0))
    stranger = Want(upstream, "app", BIGD, "address 127.0.0.2")
    (await chain.open(stranger)).close()
    fill = fills.running(stranger)
    assert fill is not None and fills.gate.abandoned == 1
    back = await chain.open(stranger)  # its client retries: joins the fill
    assert fills.gate.abandoned == 0 and fills.gate.holding("address 127.0.0.2") == 1
    waiter = asyncio.create_task(chain.open(Want(upstream, "app", SMALLD, "address 127.0.0.9")))
    await settle()
    assert not waiter.done() and not fill.preempted
    await fill.started()
    queue = remote.answers[BIGD].content.queue
    assert queue is not None
    await queue.put(BIG)
    await queue.put(EOF)
    async with asyncio.timeout(10):
        await fill.wait_done()
        served = await waiter
    back.close()
    served.close()
    assert store.read(BIGD) == BIG
    await fills.close()
