"""The rollout model of benchmarks/netbed: fair sharing, and the policies it drives."""

from __future__ import annotations

import pytest

from benchmarks.netbed.fair import max_min
from benchmarks.netbed.sim import Setup, simulate

MB = 1_000_000
RATE = 50 * MB  # bytes/s of payload per link


def test_max_min_shares_a_bottleneck_and_gives_the_rest_to_others() -> None:
    # Links 0 (capacity 10) and 1 (capacity 4): flow A on both, B on 0, C on 1.
    rates = max_min([(0, 1), (0,), (1,)], [10.0, 4.0])
    assert rates == pytest.approx([2.0, 8.0, 2.0])
    assert max_min([(0,)] * 4, [8.0]) == pytest.approx([2.0] * 4)


def test_alone_and_without_peers_the_upstream_is_the_limit() -> None:
    blobs = (1_000, 40 * MB, 10 * MB)
    alone = simulate(Setup(1, blobs, RATE, RATE, policy="no-peers"))
    assert alone.wall == pytest.approx(sum(blobs) / RATE, rel=0.02)
    eight = simulate(Setup(8, blobs, RATE, RATE, policy="no-peers"))
    assert eight.upstream_bytes == 8 * sum(blobs)
    assert eight.wall == pytest.approx(8 * alone.wall, rel=0.02)


def test_owner_only_is_a_star_on_the_owners_uplink() -> None:
    blobs = (1_000, 40 * MB)
    for n in (4, 8):
        star = simulate(Setup(n, blobs, RATE, RATE, policy="owner-only"))
        assert star.upstream_bytes == sum(blobs)
        assert star.busiest_upload == pytest.approx((n - 1) * 40 * MB, rel=0.01)
        assert star.wall == pytest.approx((n - 1) * 40 * MB / RATE, rel=0.05)


def test_holders_keep_the_rollout_near_one_node_and_every_upload_near_one_image() -> None:
    blobs = (1_000, 40 * MB, 8 * MB)
    alone = simulate(Setup(1, blobs, RATE, RATE, policy="no-peers")).wall
    tree = simulate(Setup(32, blobs, RATE, RATE, policy="holders"))
    assert tree.upstream_bytes == sum(blobs)
    assert tree.wall <= 2 * alone
    assert tree.busiest_upload <= 2 * sum(blobs)
    # Every node got every byte: the uploads add up to the other nodes' images.
    assert sum(tree.uploads) == pytest.approx(31 * sum(blobs), rel=0.001)
