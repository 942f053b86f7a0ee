"""The network bed at CI size: a 4-node rollout on a kernel network, bytes and correctness.

Four node namespaces and an upstream on a bridge, every veth limited to 80 Mbit/s by
tbf, a 20 MB image (a 16 MB layer: sixteen pieces for the holders to share). Also a
preheat (``prefetch --cluster``) before a rollout, and the bandwidth limits as the
kernel counts what each node sent and received.
The assertions are about bytes (the kernel's counters) and about every client's
sha256 checks, never about time; ``benchmarks/netbed`` measures time. Needs root
(CI is root): without it the test fails and says so.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.netbed.bed import MB, Bed, Kill, Rollout
from benchmarks.netbed.net import cleanup
from benchmarks.netbed.preheat import Preheat, preheat
from cacheproxy.peers.ring import ranked

NODES = 4
LAYERS = (16 * MB, 4 * MB)
RATE = "80mbit"
# Pieces of 1 MiB: the CI image's big layer has sixteen, for the policy to spread (at
# the default 4 MiB it would have four; the real bed's 200 MB layer has 48).
SETTINGS = {"peer_piece_size": "1MiB"}
# Bandwidth limits, bytes a second: a fifth of the 10 MB/s links, so that a node
# unlimited would pass them several times over in the windows measured.
PREFETCH = 2_000_000
UPLOAD = 2_000_000

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    if os.geteuid() != 0:
        pytest.fail("the network bed needs root (network namespaces, tc); CI runs as root")
    missing = [b for b in ("ip", "tc", "docker-registry") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)} (apt-get install iproute2 docker-registry)")
    cleanup()  # namespaces of earlier beds whose process died
    work = Path(tmp_path_factory.mktemp("netbed"))
    # The context manager removes every namespace, veth and process, pass or fail.
    with Bed(work, NODES, RATE, RATE, LAYERS, timeout=90.0, settings=SETTINGS) as made:
        yield made


def failures(rollout: Rollout, skip: int | None = None) -> list[object]:
    return [c for i, c in enumerate(rollout.clients) if i != skip and not c.get("ok")]


def test_holders_spread_the_uploads_the_star_puts_on_the_owner(bed: Bed) -> None:
    """Each blob leaves the upstream once either way; with holders no node uploads
    much more than one image, where the owner alone uploads one per other node."""
    size = bed.image_size
    tree = bed.rollout("cluster", NODES)
    star = bed.rollout("star", NODES)
    for r in (tree, star):
        assert len(r.clients) == NODES and not failures(r), r.clients
        assert r.upstream / size <= 1.05
        # Every node but one got the image from peers: the peers uploaded N - 1 images.
        assert (NODES - 1) * 0.95 <= sum(r.uploads) / size <= (NODES - 1) * 1.1
    # The star: the biggest layer's owner uploads it to every other node.
    biggest = max(b.size for b in bed.image.blobs) if bed.image else 0
    assert max(star.uploads) >= 0.95 * (NODES - 1) * biggest
    assert max(tree.uploads) / size <= 2.0
    assert max(tree.uploads) <= 0.75 * max(star.uploads)


def test_without_peers_every_node_takes_the_image_from_the_upstream(bed: Bed) -> None:
    r = bed.rollout("nopeers", NODES)
    assert len(r.clients) == NODES and not failures(r), r.clients
    assert NODES * 0.95 <= r.upstream / bed.image_size <= NODES * 1.1
    assert max(r.uploads) / bed.image_size < 0.1


@pytest.mark.parametrize("victim", ["owner", "holder"])
def test_kill_9_of_a_node_mid_rollout_leaves_every_other_client_verified(
    bed: Bed, victim: str
) -> None:
    owner = bed.owner_of_biggest(NODES)
    biggest = max(b.size for b in bed.image.blobs) if bed.image else 0
    if victim == "owner":
        # Once the owner has sent a third of its biggest layer to its peers.
        kill = Kill("owner", after=biggest // 3, counter="tx")
    else:
        kill = Kill((owner + 1) % NODES, after=biggest // 3, counter="rx")
    r = bed.rollout("cluster", NODES, kill)
    assert r.killed is not None and r.kill_at is not None, "the victim was never killed"
    survivors = r.survivors()
    assert len(survivors) == NODES - 1 and not failures(r, r.killed), r.clients
    # Mid-rollout: some survivor was still pulling when the victim died.
    assert max(c["end"] for c in survivors) > r.kill_at


def test_a_preheat_puts_each_blob_on_three_nodes_under_prefetch_rate(bed: Bed) -> None:
    """``prefetch --cluster --copies 2`` under ``prefetch_rate``: the upstream sends the
    image once, the nodes receive it three times in all (each blob on its owner and
    two holders, as the command's lines say), no node takes in more than the limit
    allows over the preheat; then a rollout takes nothing from the upstream."""
    size, members = bed.image_size, [bed.node_url(i) for i in range(NODES)]
    r = bed.rollout("cluster", NODES, settings={"prefetch_rate": str(PREFETCH)}, before=preheat(2))
    p = r.before
    assert isinstance(p, Preheat) and p.returncode == 0, p
    assert 0.95 <= p.upstream / size <= 1.05, p
    assert 2.9 <= sum(p.downloads) / size <= 3.2, p
    assert bed.image is not None
    for blob in bed.image.blobs:
        for node in ranked(blob.digest, members)[:3]:
            assert f"{blob.digest} on {node}: kept" in p.output, p.output
    # The kernel's counters: each node's intake over the preheat (headers and the
    # acknowledgements of what it sent included) within the limit and its burst.
    for got in p.downloads:
        assert got <= 1.1 * PREFETCH * p.window, (got / p.window, PREFETCH, p)
    assert len(r.clients) == NODES and not failures(r), r.clients
    assert r.upstream / size <= 0.05, r


def test_peer_upload_rate_bounds_what_each_node_sends_in_a_rollout(bed: Bed) -> None:
    """Under ``peer_upload_rate`` every node's transmit, by the kernel's counters over
    the rollout, stays within the limit; every client still verifies the image, and
    the upstream still sends it once."""
    r = bed.rollout("cluster", NODES, settings={"peer_upload_rate": str(UPLOAD)})
    assert len(r.clients) == NODES and not failures(r), r.clients
    assert r.upstream / bed.image_size <= 1.05, r
    # The peers sent the other nodes their images, at most at the limit each.
    assert sum(r.uploads) / bed.image_size >= (NODES - 1) * 0.95, r
    for sent in r.uploads:
        assert sent <= 1.1 * UPLOAD * r.window, (sent / r.window, UPLOAD, r)
