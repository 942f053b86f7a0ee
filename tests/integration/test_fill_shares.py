"""Fill slots that strangers cannot take from others by staying connected.

A real registry behind a forwarder that stalls the strangers' blobs; each stranger
connects from a loopback address of its own (the proxy believes no X-Forwarded-For).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import aiohttp

from tests.support.forwarder import Fault, Forwarder
from tests.support.images import push_blob
from tests.support.proxy import running_proxy

STRANGERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
PER_CLIENT = 2


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address``."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


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
            async with asyncio.timeout(20):
                while sum(t.done() for t in asks) + proxy.fills.gate.waiting < len(big):
                    await asyncio.sleep(0.02)
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
