"""Each address's share of a listener's connections (Gate, shares.py): nothing is
capped while there is room; at the bound, with every connection busy, an address
holding less than its share takes a place of the address holding the most; TLS
handshakes count from the accept, within the bound plus HANDSHAKES."""

from __future__ import annotations

import ssl
from typing import cast

from cacheproxy.connections.gate import HANDSHAKES, Gate
from cacheproxy.connections.guard import Guard
from cacheproxy.connections.shares import Shares

RUNTIME, STRANGER, USER = "127.0.0.1", "10.0.0.66", "10.0.0.7"


class FakeGuard:
    """What a Gate asks of a connection's guard: its address, whether it is idle,
    and to be closed (``shed`` when idle, else ``cut``)."""

    def __init__(self, address: str, idle: bool = False) -> None:
        self.address = address
        self.over = False
        self.waiting = idle
        self.closed = ""

    def idle(self) -> bool:
        return self.waiting and not self.closed

    def shed(self) -> None:
        self.closed = "shed"

    def cut(self) -> None:
        self.closed = "shed" if self.idle() else "cut"


def _gate(bound: int, tls: bool = False) -> Gate:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) if tls else None
    return Gate("client", bound=bound, header_timeout=30.0, send_timeout=30.0, tls=context)


def _admit(gate: Gate, guard: FakeGuard) -> bool:
    return gate.admit(cast(Guard, guard))


def _ask(gate: Gate, guard: FakeGuard) -> bool:
    """A request on a new connection: served (True), or answered 503 (False)."""
    assert _admit(gate, guard)
    return not guard.over or gate.promote(cast(Guard, guard))


def _busy(gate: Gate, guard: FakeGuard) -> FakeGuard:
    """Served, and in a request (no longer waiting for one)."""
    assert _ask(gate, guard) and not guard.over
    gate.busy(cast(Guard, guard))
    return guard


def test_one_address_is_never_capped_while_there_is_room() -> None:
    gate = _gate(bound=300)
    runtime = [_busy(gate, FakeGuard(RUNTIME)) for _ in range(300)]
    assert gate.open == 300 and not any(g.closed for g in runtime)
    # At the bound its own next request takes nothing of its own: answered 503.
    late = FakeGuard(RUNTIME)
    assert not _ask(gate, late) and late.over
    assert gate.stats.displaced == 0


def test_at_the_bound_a_newcomer_under_its_share_takes_the_newest_of_the_most() -> None:
    gate = _gate(bound=4)
    stranger = [_busy(gate, FakeGuard(STRANGER)) for _ in range(4)]
    # A new connection takes nothing before its request comes (a probe never does).
    first = FakeGuard(USER)
    assert _admit(gate, first) and first.over
    assert not any(g.closed for g in stranger)
    # Its request: the stranger's newest busy connection is cut; its older go on.
    assert gate.promote(cast(Guard, first)) and not first.over
    assert [g.closed for g in stranger] == ["", "", "", "cut"]
    # Two addresses: a share of 2 each. The user's second takes one more...
    second = _busy(gate, FakeGuard(USER))
    assert [g.closed for g in stranger] == ["", "", "cut", "cut"]
    # ...and no third: at its share, it is answered 503 like the stranger's next.
    assert not _ask(gate, FakeGuard(USER))
    assert not _ask(gate, FakeGuard(STRANGER))
    assert gate.stats.displaced == 2 and not first.closed and not second.closed


def test_the_address_holding_the_most_gives_an_idle_connection_first() -> None:
    gate = _gate(bound=4)
    busy = [_busy(gate, FakeGuard(STRANGER)) for _ in range(2)]
    # Idle, but not to the shed's scan (a fresh connection within its grace):
    # the rival's own are looked at whatever their age.
    fresh = FakeGuard(STRANGER)
    assert _admit(gate, fresh)
    newest = _busy(gate, FakeGuard(STRANGER))
    fresh.waiting = True
    gate.busy(cast(Guard, fresh))  # out of the gate's idle scan
    assert _ask(gate, FakeGuard(USER))
    assert (fresh.closed, newest.closed, [g.closed for g in busy]) == ("shed", "", ["", ""])


def test_handshakes_count_within_the_bound_plus_a_few_and_are_shared() -> None:
    gate = _gate(bound=4, tls=True)
    busy = [_busy(gate, FakeGuard(RUNTIME)) for _ in range(2)]
    room = 4 + HANDSHAKES - len(busy)
    silent = [FakeGuard(STRANGER) for _ in range(room)]
    assert all(gate.handshake(cast(Guard, g)) for g in silent)
    assert gate.handshaking == room
    # No room: the stranger's next is refused (reset unread)...
    assert not gate.handshake(cast(Guard, FakeGuard(STRANGER)))
    assert gate.stats.refused == 1
    # ...but another address takes the place of the stranger's newest handshake.
    user = FakeGuard(USER)
    assert gate.handshake(cast(Guard, user))
    assert silent[-1].closed == "cut" and not any(g.closed for g in silent[:-1])
    assert gate.handshaking == room and gate.stats.displaced == 1
    # A handshake done is counted no more; it is admitted as a connection.
    gate.handshake_done(cast(Guard, user))
    assert gate.handshaking == room - 1 and _admit(gate, user)


def test_shares_name_a_rival_only_for_an_address_under_its_share() -> None:
    shares: Shares[int] = Shares()
    for item in range(6):
        shares.add("a", item)
    shares.add("b", 6)
    shares.add("b", 7)
    # 8 places: a newcomer "c" makes three addresses (a share of 2), "b" is one of
    # two (a share of 4); either may take a place of "a", which holds 6.
    assert (shares.rival("c", 8), shares.rival("b", 8)) == ("a", "a")
    assert shares.rival("a", 8) is None  # past its share
    for item in range(3):
        shares.remove("a", item)
    shares.add("b", 8)
    # 3 and 3 of 6: each at its share; nobody takes from anybody.
    assert (shares.rival("a", 6), shares.rival("b", 6)) == (None, None)
    assert (shares.total, shares.newest("b"), shares.count("c")) == (6, 8, 0)
