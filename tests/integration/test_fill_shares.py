"""Fill slots that strangers cannot take from others by staying connected, and an
owner's fill that a swarm reads between piece requests is not given up for them.

A real registry behind a forwarder that stalls the strangers' blobs; each stranger
connects from a loopback address of its own (the proxy believes no X-Forwarded-For).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

from tests.integration.test_swarm import signed_url
from tests.support.cluster import start_cluster
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import push_blob
from tests.support.proxy import running_proxy
from tests.support.sessions import session_from, status_of
from tests.support.waiting import eventually

MIB = 1 << 20
STRANGERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
PER_CLIENT = 2


async def test_four_strangers_that_stay_connected_do_not_hold_every_fill_slot(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """Attack: the issue's four strangers, but they do not hang up: each keeps its
    ``max_fills_per_client`` downloads of big blobs open (the upstream is slow for
    them; here it stalls), so no fill is abandoned and none may be preempted, and
    4 x ``max_fills_per_client`` is ``max_fills`` (4 x 32 = 128 by default).
    Another client's miss on a small blob then waits until one of their fills ends
    (the upstream's pace times the blob's size, without bound).

    Expected ("no set of a few strangers can starve others"): the other client's
    miss is served while the strangers' downloads go on, e.g. because a client's
    share shrinks as others wait or some slots are kept for clients holding none."""
    name = f"fair/{uuid.uuid4().hex[:8]}"
    big = [
        await push_blob(forwarder.url, name, uuid.uuid4().bytes * 65_536)
        for _ in range(len(STRANGERS) * PER_CLIENT)
    ]
    small_data = uuid.uuid4().bytes * 1000
    small = await push_blob(forwarder.url, name, small_data)
    stall = forwarder.set_fault(
        Fault(match=re.compile("|".join(d.split(":")[1] for d in big)), kind="stall", offset=65536)
    )
    settings = {"max_fills": len(big), "max_queued_fills": 16, "max_fills_per_client": PER_CLIENT}
    sessions = [session_from(address) for address in STRANGERS]
    asks: list[asyncio.Task[aiohttp.ClientResponse]] = []
    try:
        async with running_proxy(forwarder.url, tmp_path / "c", **settings) as proxy:
            # Every stranger asks for all of its blobs at once and stays connected:
            # each download runs, or waits for a slot (the reserve is not theirs).
            asks = [
                asyncio.create_task(http.get(f"{proxy.url}/v2/{name}/blobs/{digest}"))
                for i, http in enumerate(sessions)
                for digest in big[i * PER_CLIENT : (i + 1) * PER_CLIENT]
            ]
            await eventually(
                lambda: sum(t.done() for t in asks) + proxy.fills.gate.waiting >= len(big),
                timeout=20,
                what="every download running or waiting",
            )
            answered = [task.result() for task in asks if task.done()]
            assert all(resp.status == 200 for resp in answered)  # stay connected
            assert proxy.fills.active == len(answered)
            running = proxy.fills.active
            async with aiohttp.ClientSession() as http:
                try:
                    async with asyncio.timeout(20):
                        async with http.get(f"{proxy.url}/v2/{name}/blobs/{small}") as resp:
                            status = resp.status
                            got = await resp.read()
                except TimeoutError:
                    status, got = 0, b""
            assert proxy.fills.active >= running, "the strangers' downloads went on"
            assert proxy.fills.gate.stats.preempted == 0
            for resp in answered:
                resp.close()
        assert status == 200, "the other client's miss was still waiting after 20 s"
        assert got == small_data
    finally:
        for task in asks:
            task.cancel()
        await asyncio.gather(*asks, return_exceptions=True)
        for http in sessions:
            await http.close()
        stall.release()
        forwarder.clear_faults()


async def test_a_stranger_waiting_for_a_slot_does_not_cancel_a_swarms_owner_fill(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    """Attack: in cluster mode a node filling a blob reports to the blob's owner,
    which brings the blob in (the cluster's one upstream transfer) and hands out
    pieces of it as they land. Between two piece requests nobody reads the owner's
    fill, so it counts as abandoned: a stranger's miss on the owner that has to wait
    for a slot (every slot taken, as the issue's strangers do) cancels it. The
    swarm's next report makes the owner fetch the blob from the upstream again, and
    the stranger can do it again at every piece.

    Expected: a fill a swarm is reading (holders reported filling it) is not
    abandoned; the stranger waits or is refused, and the blob leaves the upstream
    once for the cluster."""
    name = f"swarm/{uuid.uuid4().hex[:8]}"
    digest = await push_blob(forwarder.url, name, uuid.uuid4().bytes * (4 * 65_536))
    other = await push_blob(forwarder.url, name, uuid.uuid4().bytes * 1000)
    # The owner's upstream sends a first MiB of the blob, then is slow (stalls).
    stall = forwarder.set_fault(Fault(match=digest.split(":")[1], kind="stall", offset=MIB))
    try:
        async with AsyncExitStack() as stack:
            (owner,) = await start_cluster(
                stack, forwarder.url, tmp_path, secret_file, 1, max_fills=1
            )
            asker = "http://127.0.0.9:5000"
            query = {"upstream": forwarder.host, "repo": name, "node": asker}
            async with aiohttp.ClientSession() as http:
                # The asker is filling the blob: the owner brings it in.
                url, signed = signed_url(owner.url, "holding", digest, **query, have="")
                async with http.get(url, headers=signed) as resp:
                    assert resp.status == 200
                # It takes a first piece of what landed.
                url, signed = signed_url(owner.url, "pieces", digest, **query)
                async with http.get(url, headers={**signed, "Range": "bytes=0-65535"}) as resp:
                    assert resp.status == 206
                    assert len(await resp.read()) == 65536
                # A stranger's miss on the owner, with every slot taken.
                async with session_from("127.0.0.2") as stranger:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5):
                            await status_of(stranger, f"{owner.url}/v2/{name}/blobs/{other}")
                # The asker reports again: it is still filling the blob.
                url, signed = signed_url(owner.url, "holding", digest, **query, have="0-65536")
                async with http.get(url, headers=signed) as resp:
                    assert resp.status == 200
            preempted = owner.fills.gate.stats.preempted
            fetched = forwarder.count("GET", f"/blobs/{digest}")
        assert (preempted, fetched) == (0, 1), f"preempted {preempted}, fetched {fetched} times"
    finally:
        stall.release()
        forwarder.clear_faults()


async def test_a_peer_node_is_bounded_like_a_client_on_the_blobs_owner(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    """Fills a peer node asks the blob's owner for are that node's (by the URL it
    signs in its request), bounded like a client's: one stranger asking through
    several nodes cannot take every slot of the owner, and another node is served."""
    name = f"peers/{uuid.uuid4().hex[:8]}"
    big = [await push_blob(forwarder.url, name, uuid.uuid4().bytes * 65_536) for _ in range(3)]
    stall = forwarder.set_fault(
        Fault(match=re.compile("|".join(d.split(":")[1] for d in big)), kind="stall", offset=65536)
    )
    kept: list[aiohttp.ClientResponse] = []
    try:
        async with AsyncExitStack() as stack:
            (owner,) = await start_cluster(
                stack, forwarder.url, tmp_path, secret_file, 1, max_fills_per_client=1
            )

            async def ask(digest: str, node: str) -> aiohttp.ClientResponse:
                query = {"upstream": forwarder.host, "repo": name, "node": node}
                url, signed = signed_url(owner.url, "blobs", digest, **query)
                resp = await http.get(url, headers=signed)
                kept.append(resp)
                return resp

            async with aiohttp.ClientSession() as http, asyncio.timeout(30):
                first = await ask(big[0], "http://127.0.0.8:5000")
                second = await ask(big[1], "http://127.0.0.8:5000")
                other = await ask(big[2], "http://127.0.0.9:5000")
                statuses = [first.status, second.status, other.status]
                for resp in kept:
                    resp.close()
        assert statuses == [200, 429, 200], statuses
    finally:
        stall.release()
        forwarder.clear_faults()
