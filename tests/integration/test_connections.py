"""Every client socket bounded in time and in count, against real ``cacheproxy serve``
processes (and, where a stalled upstream is needed, an in-process proxy).

Time: a client that requests a large cached blob and never reads is cut after
``send_timeout`` and the blob file the server held open for it is closed (seen in
``/proc/<pid>/fd``), with the kernel's sendfile (asyncio), uvloop's writes, and TLS
on both; a client that reads slowly but keeps reading is never cut.

Count: at ``max_connections`` the idle connections go first, then every further
connection is answered 503 ``TOOMANYREQUESTS`` with ``Retry-After`` and closed,
while the probes still answer and a pull succeeds once the bound frees; the peer
listener has a bound of its own. The descriptor limit is raised at start, and the
bounds fit in it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.images import push_blob, random_bytes
from tests.support.names import unique
from tests.support.process import serve_process
from tests.support.registry import RegistryProcess
from tests.support.tls import self_signed

pytestmark = pytest.mark.timeout(180)

MIB = 1024 * 1024
# Far more than the kernel's buffers on both sides hold (loopback's are MiBs).
BIG = 16 * MIB
# The client's receive buffer: a few KiB, so the server's sends stall at once.
RCVBUF = 4096
SEND_TIMEOUT = 1.0


def _connect(address: tuple[str, int], tls: ssl.SSLContext | None) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.settimeout(10)
    sock.connect(address)
    return tls.wrap_socket(sock, server_hostname=address[0]) if tls is not None else sock


def _get(sock: socket.socket, path: str) -> tuple[int, bytes]:
    """Send a GET and read its response head; (status, body bytes read with it)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
    buf = b""
    for _ in range(64):
        chunk = sock.recv(1024)
        assert chunk, "closed before a response head"
        buf += chunk
        if b"\r\n\r\n" in buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            return int(head.split(b" ", 2)[1]), rest
    raise AssertionError("no response head in 64 KiB")


def _held(pid: int, digest: str) -> int:
    """Descriptors process ``pid`` holds on files named after ``digest``."""
    hexpart = digest.split(":", 1)[1]
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        count += hexpart in target
    return count


async def _until(check: Callable[[], bool], bound: float, what: str) -> None:
    try:
        async with asyncio.timeout(bound):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {bound} s: {what}") from None


async def _metric(http: aiohttp.ClientSession, url: str, name: str, listener: str) -> float | None:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    line = rf'^cacheproxy_connections_{name}{{listener="{listener}"}} (\S+)$'
    found = re.search(line, text, re.M)
    return float(found[1]) if found else None


def _config(path: Path, **settings: object) -> Path:
    # JSON's strings, numbers and booleans are TOML's too.
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


async def _cached_blob(
    registry: RegistryProcess, http: aiohttp.ClientSession, url: str, pid: int, size: int
) -> tuple[str, str, bytes]:
    """A blob pushed upstream and pulled once through the proxy (so it is a file on
    its disk, closed again): (its path under the proxy, its digest, its bytes)."""
    name = unique("connections/blob")
    data = random_bytes(size, name)
    digest = await push_blob(registry.url, name, data)
    path = f"/v2/{name}/blobs/{digest}"
    async with http.get(url + path) as resp:
        assert resp.status == 200
        assert await resp.read() == data
    await _until(lambda: _held(pid, digest) == 0, 10, "the fill closed its files")
    return path, digest, data


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_client_that_takes_nothing_is_cut_and_its_blob_released(
    registry: RegistryProcess, tmp_path: Path, loop: str, tls: bool
) -> None:
    settings: dict[str, object] = {"send_timeout": SEND_TIMEOUT, "loop": loop}
    context = None
    if tls:
        cert, key = self_signed(tmp_path, "127.0.0.1")
        settings |= {"tls_cert": str(cert), "tls_key": str(key)}
        context = ssl.create_default_context(cafile=str(cert))
    config = _config(tmp_path / "cacheproxy.toml", **settings)
    args = ("--config", str(config), "--upstream", registry.url, "--cache-dir", str(tmp_path / "c"))
    log = tmp_path / "serve.log"
    async with (
        serve_process(*args, log=log, tls=context) as (proc, url),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context or True)) as http,
    ):
        path, digest, _ = await _cached_blob(registry, http, url, proc.pid, BIG)
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        sock = await asyncio.to_thread(_connect, address, context)
        try:
            status, _ = await asyncio.to_thread(_get, sock, path)
            assert status == 200
            # The server opened the blob for this client, and keeps it open while its
            # sends stall on the client's full window...
            await _until(lambda: _held(proc.pid, digest) == 1, 10, "the blob opened")
            # ...until send_timeout passes without a byte taken: then it is closed.
            await _until(lambda: _held(proc.pid, digest) == 0, 20, "the blob released")
            assert await _metric(http, url, "send_timeouts_total", "client") == 1
        finally:
            sock.close()
        async with http.get(url + "/v2/") as resp:
            assert resp.status == 200
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "send_timeout" in text


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_slow_reader_that_keeps_reading_is_never_cut(
    registry: RegistryProcess, tmp_path: Path, loop: str
) -> None:
    """Reading a few KiB every 0.15 s for several times send_timeout: the transfer
    takes far longer than send_timeout, but never goes that long without a byte."""
    config = _config(tmp_path / "cacheproxy.toml", send_timeout=SEND_TIMEOUT, loop=loop)
    args = ("--config", str(config), "--upstream", registry.url, "--cache-dir", str(tmp_path / "c"))
    async with (
        serve_process(*args, log=tmp_path / "serve.log") as (proc, url),
        aiohttp.ClientSession() as http,
    ):
        path, digest, data = await _cached_blob(registry, http, url, proc.pid, 8 * MIB)
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))

        def slow_read() -> bytes:
            sock = _connect(address, None)
            try:
                status, got = _get(sock, path)
                assert status == 200
                for _ in range(40):  # 6 s at 0.15 s a read
                    chunk = sock.recv(16 * 1024)
                    assert chunk, "the server cut a client that kept reading"
                    got += chunk
                    time.sleep(0.15)
                for _ in range(len(data)):  # then the rest, as fast as it comes
                    if len(got) >= len(data):
                        break
                    chunk = sock.recv(1 << 20)
                    assert chunk, "the server cut a client that kept reading"
                    got += chunk
                return got
            finally:
                sock.close()

        got = await asyncio.to_thread(slow_read)
        assert hashlib.sha256(got).hexdigest() == digest.split(":", 1)[1]
        assert await _metric(http, url, "send_timeouts_total", "client") == 0
