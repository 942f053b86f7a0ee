"""Raw clients for the tests of connection bounds: sockets with a small receive
window that stop reading, what a server process holds open, its connection
metrics, and a ``cacheproxy serve`` config file."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
from pathlib import Path

import aiohttp

from tests.support.images import push_blob, random_bytes
from tests.support.names import unique
from tests.support.waiting import eventually

MIB = 1024 * 1024
# The client's receive buffer: a few KiB, so the server's sends stall at once.
RCVBUF = 4096


def small_window_socket(address: tuple[str, int], tls: ssl.SSLContext | None) -> socket.socket:
    """A blocking connection (TLS with ``tls``) whose receive buffer is RCVBUF."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.settimeout(10)
    sock.connect(address)
    return tls.wrap_socket(sock, server_hostname=address[0]) if tls is not None else sock


def read_head(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """Read a response head: (status, the head, body bytes read with it)."""
    buf = b""
    for _ in range(64):
        chunk = sock.recv(1024)
        assert chunk, "closed before a response head"
        buf += chunk
        if b"\r\n\r\n" in buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            return int(head.split(b" ", 2)[1]), head, rest
    raise AssertionError("no response head in 64 KiB")


def send_get(sock: socket.socket, path: str) -> tuple[int, bytes]:
    """Send a GET and read its response head; (status, body bytes read with it)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
    status, _, rest = read_head(sock)
    return status, rest


def held(pid: int, digest: str) -> int:
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


async def metric(http: aiohttp.ClientSession, url: str, name: str, listener: str) -> float | None:
    """``cacheproxy_connections_<name>{listener=...}`` on the proxy's /metrics, or None."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    line = rf'^cacheproxy_connections_{name}{{listener="{listener}"}} (\S+)$'
    found = re.search(line, text, re.M)
    return float(found[1]) if found else None


def write_config(path: Path, **settings: object) -> Path:
    """A TOML config file of top-level ``settings`` at ``path``."""
    # JSON's strings, numbers and booleans are TOML's too.
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


async def cached_blob(
    upstream: str, http: aiohttp.ClientSession, url: str, pid: int, size: int
) -> tuple[str, str, bytes]:
    """A blob pushed upstream and pulled once through the proxy (so it is a file on
    its disk, closed again): (its path under the proxy, its digest, its bytes)."""
    name = unique("connections/blob")
    data = random_bytes(size, name)
    digest = await push_blob(upstream, name, data)
    path = f"/v2/{name}/blobs/{digest}"
    async with http.get(url + path) as resp:
        assert resp.status == 200
        assert await resp.read() == data
    await eventually(lambda: held(pid, digest) == 0, timeout=10, what="the fill closed its files")
    return path, digest, data


def read_body(sock: socket.socket) -> bytes:
    """The response to the GET sent on ``sock``: its body (a 200's)."""
    status, head, body = read_head(sock)
    assert status == 200
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])  # type: ignore[index]
    for _ in range(length):
        if len(body) >= length:
            break
        chunk = sock.recv(1 << 20)
        assert chunk, "the response broke off"
        body += chunk
    return body
