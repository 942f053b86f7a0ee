"""A client that takes nothing is cut after ``send_timeout`` and the blob file the
server held open for it is closed (seen in ``/proc/<pid>/fd``), with the kernel's
sendfile (asyncio), uvloop's writes, and TLS on both; a client that reads slowly
but keeps reading is never cut. Real ``cacheproxy serve`` processes."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import serve_process
from tests.support.registry import RegistryProcess
from tests.support.stalling import (
    MIB,
    cached_blob,
    held,
    metric,
    send_get,
    small_window_socket,
    write_config,
)
from tests.support.tls import self_signed
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(180)

# Far more than the kernel's buffers on both sides hold (loopback's are MiBs).
BIG = 16 * MIB
SEND_TIMEOUT = 1.0


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
    conf = write_config(tmp_path / "cacheproxy.toml", **settings)
    args = ("--config", str(conf), "--upstream", registry.url, "--cache-dir", str(tmp_path / "c"))
    log = tmp_path / "serve.log"
    async with (
        serve_process(*args, log=log, tls=context) as (proc, url),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context or True)) as http,
    ):
        path, digest, _ = await cached_blob(registry.url, http, url, proc.pid, BIG)
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        sock = await asyncio.to_thread(small_window_socket, address, context)
        try:
            status, _ = await asyncio.to_thread(send_get, sock, path)
            assert status == 200
            # The server opened the blob for this client, and keeps it open while its
            # sends stall on the client's full window...
            await eventually(
                lambda: held(proc.pid, digest) == 1, timeout=10, what="the blob opened"
            )
            # ...until send_timeout passes without a byte taken: then it is closed.
            await eventually(
                lambda: held(proc.pid, digest) == 0, timeout=20, what="the blob released"
            )
            assert await metric(http, url, "send_timeouts_total", "client") == 1
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
    conf = write_config(tmp_path / "cacheproxy.toml", send_timeout=SEND_TIMEOUT, loop=loop)
    args = ("--config", str(conf), "--upstream", registry.url, "--cache-dir", str(tmp_path / "c"))
    async with (
        serve_process(*args, log=tmp_path / "serve.log") as (proc, url),
        aiohttp.ClientSession() as http,
    ):
        path, digest, data = await cached_blob(registry.url, http, url, proc.pid, 8 * MIB)
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))

        def slow_read() -> bytes:
            sock = small_window_socket(address, None)
            try:
                status, got = send_get(sock, path)
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
        assert await metric(http, url, "send_timeouts_total", "client") == 0
