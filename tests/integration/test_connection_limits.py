"""Every connection bounded in count: at ``max_connections`` the idle connections
go first, then each further connection is answered 503 ``TOOMANYREQUESTS`` with
``Retry-After`` and closed, while the probes still answer and a pull succeeds once
the bound frees; the peer listener has a bound of its own. The descriptor limit is
raised at start and the bounds fit in it, so a fill, its index write and the probes
go on with every connection slot taken.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import resource
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.connections import CONNECTIONS, budget
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import push_blob, random_bytes
from tests.support.names import unique
from tests.support.ports import free_port
from tests.support.process import serve_process
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.registry import RegistryProcess
from tests.support.stalling import (
    MIB,
    cached_blob,
    metric,
    read_body,
    send_get,
    small_window_socket,
    write_config,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(180)


# --- the bound on connections -------------------------------------------------------------

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(address: str) -> Stream:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _ask(stream: Stream, path: str) -> None:
    stream[1].write(f"GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
    await stream[1].drain()


async def _answer(stream: Stream) -> tuple[int, dict[str, str], bytes]:
    """One response: (status, headers in lower case, body)."""
    async with asyncio.timeout(20):
        head = (await stream[0].readuntil(b"\r\n\r\n")).decode("latin-1")
        lines = head.split("\r\n")
        fields = (line.partition(":") for line in lines[1:] if line)
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        body = await stream[0].readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split(" ")[1]), headers, body


async def _closed(stream: Stream) -> bool:
    """The server closed the connection (it sends nothing more, then EOF)."""
    async with asyncio.timeout(10):
        return await stream[0].read() == b""


def _close(streams: list[Stream]) -> None:
    for _, writer in streams:
        writer.close()


async def test_at_the_bound_idle_connections_go_first_then_new_ones_are_answered_503(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("connections/bound")
    data = random_bytes(MIB, name)
    digest = await push_blob(forwarder.url, name, data)
    path = f"/v2/{name}/blobs/{digest}"
    stall = forwarder.set_fault(Fault(match=digest, kind="stall", offset=0, methods={"GET"}))
    opened: list[Stream] = []

    async def connect() -> Stream:
        opened.append(await _open(proxy.host))
        return opened[-1]

    async with running_proxy(forwarder.url, tmp_path / "cache", max_connections=4) as proxy:
        try:
            await _bound_then_503(proxy, connect, path, data, stall)
        finally:
            _close(opened)


async def _bound_then_503(
    proxy: RunningProxy,
    connect: Callable[[], Awaitable[Stream]],
    path: str,
    data: bytes,
    stall: Fault,
) -> None:
    gate = proxy.app[CONNECTIONS].gates["client"]
    idle = await connect()
    await _ask(idle, "/v2/")
    assert (await _answer(idle))[0] == 200
    # Three transfers in progress (their blob stalls upstream), one kept alive.
    busy = [await connect() for _ in range(3)]
    for stream in busy:
        await _ask(stream, path)
    await eventually(
        lambda: gate.open == 4 and gate.waiting == 1, timeout=10, what="3 busy, 1 idle"
    )
    # A new connection takes the idle one's place; the transfers go on.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.get(proxy.url + "/v2/") as resp,
    ):
        assert resp.status == 200
    assert await _closed(idle)
    assert gate.stats.shed == 1
    busy.append(await connect())
    await _ask(busy[-1], path)
    await eventually(lambda: gate.open == 4 and gate.waiting == 0, timeout=10, what="4 busy")
    # Every connection busy: the next is answered 503 TOOMANYREQUESTS, then closed.
    late = await connect()
    await _ask(late, path)
    status, headers, body = await _answer(late)
    assert status == 503, body
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert int(headers["retry-after"]) > 0
    assert await _closed(late)
    # The probes are still answered (the kubelet must not restart a busy node).
    probe = await connect()
    await _ask(probe, "/healthz")
    assert (await _answer(probe))[0] == 200
    assert await _closed(probe)
    assert (gate.stats.refused, gate.open) == (1, 4)
    # The transfers in progress were never disturbed.
    stall.release()
    for stream in busy:
        status, _, body = await _answer(stream)
        assert status == 200 and body == data
    # Done, they wait kept alive: a pull on a fresh connection takes one's place.
    async with aiohttp.ClientSession() as http:
        async with http.get(proxy.url + path) as resp:
            assert resp.status == 200 and await resp.read() == data
        assert await metric(http, proxy.url, "refused_total", "client") == 1
        assert await metric(http, proxy.url, "max", "client") == 4


async def test_the_peer_listener_has_a_bound_of_its_own(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    peer = f"127.0.0.1:{free_port()}"
    bounds = {"max_connections": 2, "max_peer_connections": 3}
    opened: list[Stream] = []

    async def served(address: str, path: str) -> None:
        opened.append(await _open(address))
        await _ask(opened[-1], path)
        assert (await _answer(opened[-1]))[0] == 200

    async with running_proxy(forwarder.url, tmp_path / "c", peer_listen=peer, **bounds) as proxy:
        gates = proxy.app[CONNECTIONS].gates
        try:
            for address, count in ((peer, 3), (proxy.host, 2)):
                for _ in range(count):
                    await served(address, "/readyz")
            assert (gates["peer"].open, gates["client"].open) == (3, 2)
            # A third client connection makes room among the client ones only...
            await served(proxy.host, "/v2/")
            assert (gates["client"].stats.shed, gates["peer"].stats.shed) == (1, 0)
            assert gates["peer"].open == 3
            # ...and a fourth peer connection among the peer ones.
            await served(peer, "/readyz")
            assert (gates["client"].stats.shed, gates["peer"].stats.shed) == (1, 1)
            async with aiohttp.ClientSession() as http:
                assert await metric(http, proxy.url, "max", "peer") == 3
                assert await metric(http, proxy.url, "shed_total", "peer") == 1
        finally:
            _close(opened)


async def test_at_the_bound_another_address_takes_its_share_when_its_request_comes(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """One address holds every connection busy (each waits for a blob whose upstream
    stalls). A probe from another address is answered and cuts nothing; that
    address's request takes the place of the newest busy connection, whose client
    sees its connection cut; the others' transfers go on to their end."""
    name = unique("connections/share")
    data = random_bytes(MIB, name)
    digest = await push_blob(forwarder.url, name, data)
    path = f"/v2/{name}/blobs/{digest}"
    stall = forwarder.set_fault(Fault(match=digest, kind="stall", offset=0, methods={"GET"}))
    bound = 4
    opened: list[Stream] = []
    async with running_proxy(forwarder.url, tmp_path / "c", max_connections=bound) as proxy:
        gate = proxy.app[CONNECTIONS].gates["client"]
        try:
            for _ in range(bound):
                opened.append(await _open(proxy.host))
                await _ask(opened[-1], path)
            await eventually(
                lambda: gate.open == bound and gate.waiting == 0, timeout=10, what="all busy"
            )
            local = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
            async with aiohttp.ClientSession(connector=local) as other:
                async with other.get(proxy.url + "/readyz") as resp:
                    assert resp.status == 200
                assert gate.stats.displaced == 0
                async with other.get(proxy.url + "/v2/") as resp:
                    assert resp.status == 200
            assert gate.stats.displaced == 1
            with pytest.raises(ConnectionResetError):  # cut with a reset
                async with asyncio.timeout(10):
                    await opened[-1][0].read()
            stall.release()
            for stream in opened[:-1]:
                status, _, body = await _answer(stream)
                assert status == 200 and body == data
        finally:
            stall.release()
            _close(opened)


async def test_an_answer_sent_without_reading_the_body_closes_the_connection(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """Requests whose chunked bodies never end, answered without being read (the
    proxy reads no body): aiohttp would read each body on for 10 s after the answer,
    the connection neither idle (sheddable) nor in a request, so a client could hold
    every slot by sending bodies alone. Each connection closes after its answer
    instead, and a new connection from the same address, at the bound, is served."""
    bound = 4
    opened: list[Stream] = []
    async with running_proxy(forwarder.url, tmp_path / "c", max_connections=bound) as proxy:
        try:
            for _ in range(bound):
                opened.append(await _open(proxy.host))
                opened[-1][1].write(
                    b"GET /v2/ HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"1\r\na\r\n"
                )
                await opened[-1][1].drain()
            for stream in opened:
                assert (await _answer(stream))[0] == 200
            late = await _open(proxy.host)
            opened.append(late)
            await _ask(late, "/v2/")
            status, _, body = await _answer(late)
            assert status == 200, body
            for stream in opened[:bound]:
                assert await _closed(stream)
            assert proxy.app[CONNECTIONS].gates["client"].stats.refused == 0
        finally:
            _close(opened)


# --- descriptors ----------------------------------------------------------------------------


def _nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/<pid>/limits")


async def test_the_descriptor_limit_is_raised_and_the_bounds_fit_in_it(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    conf = write_config(tmp_path / "cacheproxy.toml", max_connections=5000)
    args = ("--config", str(conf), "--upstream", registry.url, "--cache-dir", str(tmp_path / "c"))
    log = tmp_path / "serve.log"
    async with (
        serve_process(*args, log=log, nofile=(1024, 4096)) as (proc, url),
        aiohttp.ClientSession() as http,
    ):
        assert _nofile(proc.pid) == (4096, 4096)
        bound = await metric(http, url, "max", "client")
        assert bound is not None and budget.MIN_CONNECTIONS <= bound < 5000
    lowered = [line for line in log.read_text().splitlines() if "lowered" in line]
    assert len(lowered) == 1, lowered
    assert f"max_connections lowered from 5000 to {int(bound)}" in lowered[0]
    assert "RLIMIT_NOFILE is 4096" in lowered[0]


def test_no_room_for_connections_refuses_to_start(tmp_path: Path) -> None:
    def tight() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    result = subprocess.run(
        [sys.executable, "-m", "cacheproxy", "serve", "--upstream", "http://127.0.0.1:9"],
        env={
            **os.environ,
            "CACHEPROXY_LISTEN": f"127.0.0.1:{free_port()}",
            "CACHEPROXY_CACHE_DIR": str(tmp_path / "c"),
        },
        capture_output=True,
        timeout=60,
        preexec_fn=tight,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert b"no room for 16 client connections" in result.stderr
    assert b"Traceback" not in result.stderr


# Few fills on one upstream connection each: room for 20 connections in 372
# descriptors (what connections.budget keeps for the rest, plus two per connection).
TIGHT = {"max_fills": 2, "upstream_segments": 1, "send_timeout": 3.0}
TIGHT_NOFILE = 372
TIGHT_BOUND = 20


async def test_with_every_connection_slot_taken_the_cache_keeps_working(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    conf = write_config(tmp_path / "cacheproxy.toml", **TIGHT)
    cache = tmp_path / "c"
    args = ("--config", str(conf), "--upstream", forwarder.url, "--cache-dir", str(cache))
    log = tmp_path / "serve.log"
    limits = (TIGHT_NOFILE, TIGHT_NOFILE)
    async with (
        serve_process(*args, log=log, nofile=limits) as (proc, url),
        aiohttp.ClientSession() as http,
    ):
        assert await metric(http, url, "max", "client") == TIGHT_BOUND
        cached, _, _ = await cached_blob(forwarder.url, http, url, proc.pid, 8 * MIB)
        name = unique("connections/fill")
        data = random_bytes(2 * MIB, name)
        digest = await push_blob(forwarder.url, name, data)
        stall = forwarder.set_fault(Fault(match=digest, kind="stall", offset=0, methods={"GET"}))
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        filling = f"/v2/{name}/blobs/{digest}"
        await _with_every_slot_taken(http, url, address, filling, cached, stall)
        assert (cache / "blobs" / "sha256" / digest[7:9] / digest[7:]).is_file()
    text = log.read_text()
    assert "Too many open files" not in text and "Traceback" not in text, text[-3000:]


async def _with_every_slot_taken(
    http: aiohttp.ClientSession,
    url: str,
    address: tuple[str, int],
    filling: str,
    cached: str,
    stall: Fault,
) -> None:
    """One client waits for a fill (its blob stalls upstream); 60 more ask for a
    cached blob and never read: the bound's worth stall in their sends, the rest are
    answered 503. Then a probe, the fill's end, and, once send_timeout has cut the
    stalled ones, a pull on a fresh connection."""
    waiter = await asyncio.to_thread(small_window_socket, address, None)
    held = []
    try:
        request = f"GET {filling} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode()
        await asyncio.to_thread(waiter.sendall, request)
        await eventually(lambda: stall.hits > 0, timeout=10, what="the fill started")
        statuses = []
        for _ in range(60):
            sock = await asyncio.to_thread(small_window_socket, address, None)
            held.append(sock)
            statuses.append((await asyncio.to_thread(send_get, sock, cached))[0])
        assert (statuses.count(200), statuses.count(503)) == (TIGHT_BOUND - 1, 60 - TIGHT_BOUND + 1)
        probe = await asyncio.to_thread(small_window_socket, address, None)
        held.append(probe)
        assert (await asyncio.to_thread(send_get, probe, "/healthz"))[0] == 200
        # The fill runs to its end with every slot taken: its file, the index write.
        stall.release()
        got = await asyncio.to_thread(read_body, waiter)
        assert hashlib.sha256(got).hexdigest() == filling.rsplit(":", 1)[1]
        # Its client done, its connection idle makes room for a pull on a new one; the
        # stalled clients are cut once send_timeout passes.
        served = functools.partial(_served, http, url + filling)
        await eventually(served, timeout=30, interval=0.2, what="a pull on a new connection")

        async def cut() -> bool:
            return await metric(http, url, "send_timeouts_total", "client") == TIGHT_BOUND - 1

        await eventually(cut, timeout=30, interval=0.2, what="the stalled clients cut")
    finally:
        waiter.close()
        for sock in held:
            sock.close()


async def _served(http: aiohttp.ClientSession, url: str) -> bool:
    """Whether the answer is a 200 rather than the bound's 503."""
    async with http.get(url) as resp:
        if resp.status == 200:
            await resp.read()
            return True
        assert resp.status == 503
        return False
