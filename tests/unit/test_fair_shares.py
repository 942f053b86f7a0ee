"""Fair shares of the fill slots: the gate's policy, then preemption through the
registry of fills with scripted feeds. No network."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from cacheproxy.blobs.admission import DiskBudget, FillGate, FillLimits
from cacheproxy.blobs.fillstate import FillState
from cacheproxy.blobs.inflight import Fills, InFlight
from cacheproxy.blobs.source import Body, Feed, Want
from cacheproxy.errors import TooManyRequests, UpstreamUnavailable
from cacheproxy.layout import CacheLayout
from cacheproxy.oci import Digest
from cacheproxy.sizes import DiskSpace
from cacheproxy.store.files import BlobStore
from cacheproxy.upstream.client import Upstream
from tests.unit.test_fill import EOF, Answer, FakeFeed, digest_of, live

# --- the gate ----------------------------------------------------------------------


async def settle() -> None:
    """Let every task that can run do so (a bounded number of loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


def gate_of(running: int = 4, queued: int = 16, per_client: int = 8) -> FillGate:
    return FillGate(FillLimits(running, queued, per_client))


async def test_a_waiting_slot_goes_to_the_client_holding_fewest_not_the_first() -> None:
    gate = gate_of(running=4)
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
    gate = gate_of(running=2, queued=16, per_client=3)
    slots = [await gate.enter("c"), await gate.enter("c")]
    waiter = asyncio.create_task(gate.enter("c"))
    await settle()
    with pytest.raises(TooManyRequests) as caught:
        await gate.enter("c")
    assert caught.value.headers == {"Retry-After": "1"}
    assert gate.stats.refused["per_client"] == 1
    # Another client is not bounded by it.
    other = asyncio.create_task(gate.enter("d"))
    await settle()
    assert gate.waiting == 2
    for slot in slots:
        gate.leave(slot)
    await settle()
    assert waiter.done() and other.done()


async def test_a_full_queue_is_shared_a_client_with_less_takes_a_place() -> None:
    gate = gate_of(running=2, queued=4, per_client=4)
    slots = [await gate.enter("a"), await gate.enter("a")]
    greedy = [asyncio.create_task(gate.enter("b")) for _ in range(3)]
    peer = asyncio.create_task(gate.enter(""))
    await settle()
    assert gate.waiting == 4
    # A peer, or a client with as much as b, is refused; c (nothing) takes the
    # place of b's newest request.
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
    # Slots free: b, the peer, c in turn (each holds nothing), b again last.
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


async def test_peers_are_not_bounded_per_client() -> None:
    gate = gate_of(running=3, queued=16, per_client=1)
    slots = [await gate.enter("") for _ in range(3)]
    assert gate.holding("") == 0
    waiter = asyncio.create_task(gate.enter(""))
    await settle()
    gate.leave(slots[0])
    await settle()
    assert waiter.done()


async def test_an_abandoned_slot_stops_counting_and_goes_to_the_next_waiter() -> None:
    gate = gate_of(running=2, queued=16, per_client=2)
    cancelled: list[str] = []
    a1, a2 = await gate.enter("a"), await gate.enter("a")
    with pytest.raises(TooManyRequests):
        await gate.enter("a")
    gate.abandon(a1, lambda: cancelled.append("a1"))
    assert gate.holding("a") == 1 and gate.abandoned == 1
    # a may ask again (the abandoned fill is not its share), and takes a1's slot.
    again = await gate.enter("a")
    assert cancelled == ["a1"] and a1.released
    assert gate.stats.preempted == 1
    # A fill someone joins again counts, and is not cancelled for a waiter.
    gate.abandon(a2, lambda: cancelled.append("a2"))
    gate.rejoin(a2)
    assert gate.holding("a") == 2 and gate.abandoned == 0
    b = asyncio.create_task(gate.enter("b"))
    await settle()
    assert not b.done() and cancelled == ["a1"]
    # Abandoned while someone waits: cancelled for the waiter at once.
    gate.abandon(a2, lambda: cancelled.append("a2"))
    await settle()
    assert b.done() and cancelled == ["a1", "a2"]
    gate.leave(a2)  # its fill's end, later: nothing more to give back
    gate.leave(again)
    gate.leave(b.result())
    assert gate.waiting == 0 and gate.abandoned == 0


async def test_a_fill_fed_by_peers_is_preempted_first() -> None:
    gate = gate_of(running=2, queued=16, per_client=4)
    cancelled: list[str] = []
    old, fed = await gate.enter("a"), await gate.enter("a")
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


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    store = BlobStore(CacheLayout(tmp_path / "cache"))
    store.prepare()
    return store


async def test_an_abandoned_fill_is_cancelled_cleanly_for_a_waiting_client(
    store: BlobStore,
) -> None:
    remote = ScriptedRemote()
    fills = Fills(
        store,
        limits=FillLimits(running=1, queued=4, per_client=4),
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
    async with asyncio.timeout(10):
        while fill.progress() < 300_000:
            await asyncio.sleep(0.01)
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
        while upstream.pins != 1 or fill.state is not FillState.FAILED:
            await asyncio.sleep(0.01)
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
