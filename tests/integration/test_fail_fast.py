"""Fail fast for the runtime's fallback: a node's runtime asks the registry itself
only once the proxy has answered, so a request that cannot reach the upstream (and
finds nothing cached) is answered at once, unretried, within ``upstream_fail_fast``;
a transfer already running keeps its retries and resumes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.http.keys import UPSTREAMS
from cacheproxy.oci import OCI_MANIFEST
from tests.integration.test_faults import GET, assert_exact, fetch, new_blob
from tests.support.forwarder import Fault, Forwarder
from tests.support.ports import free_port
from tests.support.proxy import blob_url, running_proxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)
DIGEST = "sha256:" + "ab" * 32


class Gate:
    """A TCP relay to ``target`` that can stop listening (connections refused, the
    ones open cut) and listen again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._open |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        tasks = [
            asyncio.create_task(pump(reader, up_writer)),
            asyncio.create_task(pump(up_reader, writer)),
        ]
        self._tasks |= set(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._open -= {writer, up_writer}

    async def close(self) -> None:
        if self._server is not None:
            await self.down()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def gate(forwarder: Forwarder) -> AsyncIterator[Gate]:
    relay = Gate(("127.0.0.1", forwarder.port))
    await relay.up()
    try:
        yield relay
    finally:
        await relay.close()


async def test_cold_requests_to_an_unreachable_upstream_are_answered_unretried(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # a port nobody listens on
    async with running_proxy(dead, tmp_path / "cache") as proxy:
        up = proxy.app[UPSTREAMS].get()
        manifest = await fetch(
            http, f"{proxy.url}/v2/lib/gone/manifests/v1", {"Accept": OCI_MANIFEST}
        )
        blob = await fetch(http, blob_url(proxy, "lib/gone", DIGEST))
    for outcome in (manifest, blob):
        assert outcome.status == 503
        assert b'"UNAVAILABLE"' in outcome.body
    # One connection attempt per upstream request, none retried.
    assert up.retries == 0
    assert up.unreachable == up.requests_sent >= 2


async def test_a_transfer_running_resumes_through_a_refused_connect(
    forwarder: Forwarder, gate: Gate, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "fail-fast-resume")
    stall = forwarder.set_fault(
        Fault(match=digest, kind="stall", offset=300_000, once=True, methods=GET)
    )
    async with running_proxy(gate.url, tmp_path / "cache", upstream_retry_budget=20.0) as proxy:
        up = proxy.app[UPSTREAMS].get()
        pull = asyncio.create_task(fetch(http, blob_url(proxy, name, digest)))
        # Bytes arrived: the transfer is running.
        await eventually(
            lambda: stall.hits == 1 and proxy.fills.stats.upstream_bytes > 0,
            timeout=10,
            what="the transfer running",
        )
        # The upstream goes away mid-body: the body breaks, the resume is refused...
        await gate.down()
        await eventually(lambda: up.unreachable >= 1, timeout=10, what="the resume refused")
        # ... and retried, not failed fast: it gets through once the upstream is back.
        await gate.up()
        stall.release()
        outcome = await asyncio.wait_for(pull, 30)
    assert_exact(outcome, data)
    assert up.retries >= 1
    assert proxy.fills.stats.resumed >= 1


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """A port that takes no connection and refuses none: a listener with a full
    accept queue, whose SYNs the kernel drops (tcp_abort_on_overflow = 0)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = []
    for _ in range(2):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        filler.append(s)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        for s in filler:
            s.close()
        listener.close()


@pytest.mark.wallclock
async def test_a_black_holed_upstream_is_answered_within_the_bound(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with black_hole() as url:
        async with running_proxy(url, tmp_path / "cache", upstream_fail_fast=1.0) as proxy:
            started = time.monotonic()
            outcome = await fetch(http, blob_url(proxy, "lib/gone", DIGEST))
            assert time.monotonic() - started < 1.0 + 1.5
    assert outcome.status == 503
