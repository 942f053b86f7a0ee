from __future__ import annotations

import collections
import os
from pathlib import Path

from cacheproxy.peers.membership import Membership
from cacheproxy.peers.ring import ask_before_self, ranked
from cacheproxy.peers.signing import sign, sign_answer, verify, verify_answer

NODES = [f"http://10.0.0.{i}:5000" for i in range(1, 5)]


def test_ranking_is_stable_and_shared_by_every_node() -> None:
    for key in ["sha256:" + "a" * 64, "tag:docker.io/library/alpine:3"]:
        order = ranked(key, NODES)
        assert sorted(order) == sorted(NODES)
        assert ranked(key, reversed(NODES)) == order  # input order does not matter
        # Each node asks exactly the members ranked above itself.
        for i, node in enumerate(order):
            assert ask_before_self(key, NODES, node) == order[:i]


def test_ownership_spreads_and_moves_only_for_the_member_that_left() -> None:
    keys = [f"sha256:{i:064x}" for i in range(2000)]
    owners = collections.Counter(ranked(k, NODES)[0] for k in keys)
    assert all(300 < n < 700 for n in owners.values()), owners
    gone = NODES[0]
    for key in keys:
        before = ranked(key, NODES)[0]
        after = ranked(key, NODES[1:])[0]
        assert after == before or before == gone


def test_signatures() -> None:
    secret = b"a-cluster-secret-of-enough-bytes"
    node, other = "http://10.0.0.2:5000", "http://10.0.0.3:5000"
    path = "/_cacheproxy/peer/blobs/x?repo=a"
    value = sign(secret, "GET", path, node, now=1000.0)
    assert verify(secret, "GET", path, node, value, clock=lambda: 1010.0)
    assert not verify(secret, "GET", "/_cacheproxy/peer/blobs/y?repo=a", node, value)
    # Made for one node: refused by every other.
    assert not verify(secret, "GET", path, other, value, clock=lambda: 1010.0)
    assert not verify(b"another-secret-xxxxxxxxxxxxxxxx", "GET", path, node, value)
    # Replayed after the window.
    assert not verify(secret, "GET", path, node, value, clock=lambda: 1000.0 + 3600)
    for bad in [None, "", "nodot", "abc.def", "1000."]:
        assert not verify(secret, "GET", "/p", node, bad, clock=lambda: 1000.0)


def test_answer_signatures_bind_the_request_and_every_field() -> None:
    secret = b"a-cluster-secret-of-enough-bytes"
    request = sign(secret, "GET", "/_cacheproxy/peer/manifests/v1", "http://n:1", now=1000.0)
    fields = ["docker.io", "library/app", "v1", "sha256:" + "a" * 64, "application/json"]
    value = sign_answer(secret, request, fields, now=1000.0)
    assert verify_answer(secret, request, fields, value, clock=lambda: 1001.0)
    for i in range(len(fields)):
        changed = list(fields)
        changed[i] += "x"
        assert not verify_answer(secret, request, changed, value, clock=lambda: 1001.0)
    other = sign(secret, "GET", "/_cacheproxy/peer/manifests/v2", "http://n:1", now=1000.0)
    assert not verify_answer(secret, other, fields, value, clock=lambda: 1001.0)
    assert not verify_answer(b"x" * 32, request, fields, value, clock=lambda: 1001.0)
    assert not verify_answer(secret, request, fields, value, clock=lambda: 9999.0)
    assert not verify_answer(secret, "", fields, value, clock=lambda: 1001.0)


async def test_membership_from_file_and_health(tmp_path: Path) -> None:
    now = [0.0]
    peers = tmp_path / "peers"
    peers.write_text("# cluster\nhttp://10.0.0.2:5000/\nhttp://10.0.0.3:5000\n\n")
    m = Membership("http://10.0.0.1:5000", file=peers, backoff=30, clock=lambda: now[0])
    await m.start()
    assert m.members() == NODES[:3]
    assert m.peers() == NODES[1:3]
    m.mark_bad(NODES[1], "test")
    assert m.peers() == [NODES[2]]
    assert m.health()[NODES[1]] == "avoided"
    now[0] += 31
    assert m.peers() == NODES[1:3]
    peers.write_text("http://10.0.0.4:5000\n")
    os.utime(peers, (1, 1))  # a different mtime even within the same second
    await m.refresh()
    assert m.members() == [NODES[0], NODES[3]]
    await m.close()


async def test_membership_from_dns() -> None:
    m = Membership("http://127.0.0.1:5000", dns="localhost:5001")
    await m.start()
    assert "http://127.0.0.1:5001" in m.members()
    await m.close()
