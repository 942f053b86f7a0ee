"""Attacks from outside that still get through: each test is one, replayed against
real proxies and the real registry, and asserts the answer docs/security.md ("Access
control, TLS and limits") promises (so each fails while the gap is open).

Each stranger is a loopback address of its own (the proxy believes no
X-Forwarded-For).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import uuid
from pathlib import Path

import aiohttp

from cacheproxy.connections import CONNECTIONS
from cacheproxy.http.keys import CLIENT_AUTH
from cacheproxy.http.passwords import bcrypt_check
from tests.integration.test_swarm import signed_url
from tests.support.cluster import SECRET
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import basic_auth, push_blob
from tests.support.ports import free_port
from tests.support.process import serve_process
from tests.support.proxy import running_proxy
from tests.support.registry import RegistryProcess, write_htpasswd
from tests.support.sessions import session_from, status_of
from tests.support.tls import self_signed
from tests.support.waiting import eventually

STRANGERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


# --- connections --------------------------------------------------------------------


async def test_one_stranger_cannot_hold_every_connection_of_the_listener(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """Attack: one stranger (one address) opens ``max_connections`` connections and
    keeps each busy: here each waits for the next bytes of one blob whose upstream
    stalls (one fill, joined by all: no fill slot is spent; a slow reader of a
    cached blob that takes a few bytes every ``send_timeout`` does as well). At the
    bound nothing is idle to shed, so every other client, on any address, is
    answered 503 TOOMANYREQUESTS until the stranger lets go.

    Expected: a client's share of the connections (by address, as for fill slots and
    password checks), so another address is still served at the bound."""
    name = f"conn/{uuid.uuid4().hex[:8]}"
    digest = await push_blob(forwarder.url, name, uuid.uuid4().bytes * 65_536)
    stall = forwarder.set_fault(Fault(match=digest.split(":")[1], kind="stall", offset=65536))
    bound = 4
    kept: list[aiohttp.ClientResponse] = []
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=bound)
    try:
        async with (
            running_proxy(forwarder.url, tmp_path / "c", max_connections=bound) as proxy,
            aiohttp.ClientSession(connector=connector) as stranger,
        ):
            for _ in range(bound):
                resp = await stranger.get(f"{proxy.url}/v2/{name}/blobs/{digest}")
                assert resp.status == 200
                kept.append(resp)
            async with session_from("127.0.0.3") as user, asyncio.timeout(20):
                status = (await status_of(user, f"{proxy.url}/v2/"))[0]
            for resp in kept:
                resp.close()
        assert status == 200, f"another address was answered {status} at the bound"
    finally:
        stall.release()
        forwarder.clear_faults()


async def test_a_stranger_without_the_secret_does_not_hold_the_peer_listener(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """Attack: the peer listener is on the node's address, which every pod reaches.
    A stranger without the cluster secret opens ``max_peer_connections``
    connections and sends on each a request whose chunked body never ends. The
    401 is answered at once, but aiohttp then reads the body on for its lingering
    time (10 s), and meanwhile the connection is neither idle (the request was
    read) nor in a request: it cannot be shed. Opened again every few seconds, they
    keep every peer slot, and the cluster's real peers are answered 503 (each node
    then fetches from the upstream itself). The same works on the client listener
    without any blob (see the connection test above).

    Expected: a request the proxy answers without reading its body closes its
    connection (no lingering), or unsigned requests hold no peer slot; a real
    peer's signed request is served."""
    secret_file = tmp_path / "peer-secret"
    secret_file.write_bytes(SECRET + b"\n")
    name = f"peers/{uuid.uuid4().hex[:8]}"
    data = uuid.uuid4().bytes * 1000
    digest = await push_blob(forwarder.url, name, data)
    peer_port = free_port()
    self_url = f"http://127.0.0.1:{peer_port}"
    settings = {
        "peers": (self_url,),
        "self_url": self_url,
        "peer_secret_file": secret_file,
        "peer_listen": f"127.0.0.1:{peer_port}",
        "max_peer_connections": 4,
    }
    strangers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    async with running_proxy(forwarder.url, tmp_path / "c", **settings) as proxy:
        try:
            for _ in range(4):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", peer_port, local_addr=("127.0.0.2", 0)
                )
                writer.write(
                    f"GET /_cacheproxy/peer/blobs/{digest}?repo={name} HTTP/1.1\r\n"
                    "Host: node\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n".encode()
                )
                await writer.drain()
                strangers.append((reader, writer))
            # Each answered 401 and closed at once, its body not read on: the
            # stranger holds no peer slot.
            async with asyncio.timeout(20):
                for reader, _ in strangers:
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 401"), head
                    assert b"\r\nconnection: close\r\n" in head.lower(), head
                    await reader.read()  # to the end: the proxy closed it
            assert proxy.app[CONNECTIONS].gates["peer"].open == 0
            url, signed = signed_url(self_url, "blobs", digest, upstream=forwarder.host, repo=name)
            async with (
                session_from("127.0.0.3") as peer,
                asyncio.timeout(20),
                peer.get(url, headers=signed) as resp,
            ):
                status = resp.status
        finally:
            for _, writer in strangers:
                writer.close()
    assert status == 200, f"a real peer was answered {status}"


async def test_tls_handshakes_that_never_finish_do_not_take_the_caches_descriptors(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """Attack: with TLS on the listener, a stranger opens connections and never sends
    a ClientHello. Handshakes count against no bound until complete (README:
    "they count against a bound only once complete"), only ``client_header_timeout``
    (30 s) ends each, so a few hundred of them at once take every descriptor the
    budget kept for fills, the index and the upstreams: a client already connected
    then cannot get an uncached blob (no temp file, no upstream socket).

    Expected ("descriptors budgeted so the cache keeps working at the limit"):
    handshakes in progress are bounded too (counted with the connections, or a
    bound of their own), and the connected client's pull succeeds."""
    cert, key = self_signed(tmp_path, "127.0.0.1")
    context = ssl.create_default_context(cafile=str(cert))
    conf = tmp_path / "cacheproxy.toml"
    conf.write_text(
        "max_fills = 2\nupstream_segments = 1\nsend_timeout = 3.0\n"
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    name = f"tls/{uuid.uuid4().hex[:8]}"
    data = uuid.uuid4().bytes * 65_536
    digest = await push_blob(registry.url, name, data)
    args = ("--config", str(conf), "--upstream", registry.url, "--cache-dir", str(tmp_path / "c"))
    log = tmp_path / "serve.log"
    silent: list[socket.socket] = []
    connector = aiohttp.TCPConnector(ssl=context, limit=1)
    async with (
        serve_process(*args, log=log, tls=context, nofile=(372, 372)) as (_, url),
        aiohttp.ClientSession(connector=connector) as http,
    ):
        # The client's connection, made before the stranger comes.
        async with http.get(url + "/v2/") as resp:
            assert resp.status == 200
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        try:
            for _ in range(400):
                silent.append(socket.create_connection(address, timeout=5))
            await asyncio.sleep(1.0)  # the server accepts what it can
            async with asyncio.timeout(20), http.get(f"{url}/v2/{name}/blobs/{digest}") as resp:
                status = resp.status
                got = await resp.read() if status == 200 else b""
        finally:
            for sock in silent:
                sock.close()
    assert status == 200, f"answered {status}: {log.read_text()[-600:]}"
    assert got == data


# --- password checks ----------------------------------------------------------------


async def test_four_addresses_guessing_do_not_refuse_a_real_users_first_login(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """Attack: the issue's flood of wrong passwords, from four addresses instead of
    one, each on four connections: each keeps its ``per_client`` share (4) of the 16
    checks (a new guess the moment one is answered 401), so every check is taken and
    a real user's first login (never verified before) is answered 429
    TOOMANYREQUESTS, however fairly the threads are shared among the checks already
    admitted: "full" refuses before any share is looked at.

    Expected ("a per-client share ... so that no set of a few strangers can starve
    others"): the real user's login waits its turn (behind at most one check of each
    stranger) and succeeds; a stranger is the one refused."""
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, "ci", "ci-password-1")
    config = tmp_path / "c.toml"
    config.write_text(f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = false\n')
    async with running_proxy(registry.url, tmp_path / "cache", config_file=config) as proxy:
        passwords = proxy.app[CLIENT_AUTH].passwords

        def slow(password: bytes, hashed: bytes) -> bool:
            time.sleep(0.05)  # a real cost's time, without its CPU
            return bcrypt_check(password, hashed)

        passwords.checker = slow
        stop = asyncio.Event()
        sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(a, 0), limit=4))
            for a in STRANGERS
        ]

        async def guess(stranger: aiohttp.ClientSession, n: int) -> None:
            # Guesses all different: the same credentials at once would share a check.
            for i in range(2000):
                if stop.is_set():
                    return
                headers = basic_auth("ci", f"guess-{n}-{i}")
                async with stranger.get(f"{proxy.url}/v2/", headers=headers) as resp:
                    await resp.read()

        flood = [
            asyncio.create_task(guess(s, n))
            for k, s in enumerate(sessions)
            for n in range(4 * k, 4 * k + 4)
        ]
        statuses: list[int] = []
        try:
            await eventually(
                lambda: passwords.pending >= passwords.max_pending,
                timeout=30,
                what="the strangers' checks at the bound",
            )
            async with session_from("127.0.0.9") as user, asyncio.timeout(30):
                for _ in range(3):
                    headers = basic_auth("ci", "ci-password-1")
                    async with user.get(f"{proxy.url}/v2/", headers=headers) as resp:
                        statuses.append(resp.status)
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*flood, return_exceptions=True)
            for s in sessions:
                await s.close()
    assert statuses == [200, 200, 200], statuses
