"""Waiters in a line per client, served in turn; who counts as one client."""

from __future__ import annotations

from cacheproxy.fairness import FairQueue, client_address


def test_the_queue_serves_clients_in_turn_not_first_come() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(3):
        queue.push("a", f"a{i}")
    queue.push("b", "b0")
    queue.push("c", "c0")
    queue.push("b", "b1")
    served = []
    while (client := queue.next()) is not None:
        served.append(queue.take(client))
    assert served == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert len(queue) == 0


def test_the_lowest_rank_goes_first_then_the_turn_order() -> None:
    queue: FairQueue[str] = FairQueue()
    for client in ("a", "b", "c"):
        queue.push(client, client + "0")
        queue.push(client, client + "1")
    held = {"a": 5, "b": 1, "c": 1}
    first = queue.next(held.__getitem__)
    assert first == "b"
    assert queue.take("b") == "b0"
    # b now goes behind c, its equal.
    assert queue.next(held.__getitem__) == "c"


def test_dead_items_get_no_turn_and_removed_ones_are_gone() -> None:
    dead = {"a0"}
    queue: FairQueue[str] = FairQueue(dead=dead.__contains__)
    queue.push("a", "a0")
    queue.push("b", "b0")
    queue.push("b", "b1")
    assert queue.remove("b", "b0")
    assert not queue.remove("b", "b0")
    assert queue.next() == "b"
    assert queue.take("b") == "b1"
    assert queue.next() is None
    assert len(queue) == 0


def test_the_newest_live_item_can_be_taken_out() -> None:
    dead = {"a2"}
    queue: FairQueue[str] = FairQueue(dead=dead.__contains__)
    for item in ("a0", "a1", "a2"):
        queue.push("a", item)
    assert queue.take_newest("a") == "a1"
    assert queue.take_newest("b") is None
    assert queue.take_newest("a") == "a0"
    assert queue.take_newest("a") is None
    assert len(queue) == 0


def test_an_ipv6_client_is_its_64_and_an_ipv4_one_its_address() -> None:
    assert client_address("127.0.0.5") == "127.0.0.5"
    assert client_address("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_address("2001:db8:1:2:aaaa::1") == client_address("2001:db8:1:2:bbbb::9")
    assert client_address("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:3::1") != client_address("2001:db8:1:2::1")
    assert client_address(None) == ""
    assert client_address("/run/proxy.sock") == "/run/proxy.sock"
