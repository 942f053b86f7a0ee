"""Peers over TLS: blobs cross the wire between nodes encrypted, and a peer whose
certificate does not chain to peer_ca_file is not used (the upstream is, counted)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.peers.ring import ranked
from tests.support.forwarder import Forwarder
from tests.support.images import push_blob, random_bytes, sha256_digest
from tests.support.names import unique
from tests.support.ports import free_port
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.tcprelay import TcpRelay
from tests.support.tls import Authority


@asynccontextmanager
async def tls_pair(
    upstream: str,
    tmp_path: Path,
    secret_file: Path,
    ca_file: Path,
    cert: tuple[Path, Path],
    **settings: object,
) -> AsyncIterator[tuple[list[RunningProxy], list[TcpRelay], tuple[str, str]]]:
    """Two nodes whose peer listeners serve TLS, each reached by the other through a
    relay that keeps a copy of the wire (so self_url is the relay's URL)."""
    peer_ports = [free_port(), free_port()]
    async with AsyncExitStack() as stack:
        relays = [
            await stack.enter_async_context(TcpRelay(("127.0.0.1", port))) for port in peer_ports
        ]
        urls = (f"https://127.0.0.1:{relays[0].port}", f"https://127.0.0.1:{relays[1].port}")
        nodes = [
            await stack.enter_async_context(
                running_proxy(
                    upstream,
                    tmp_path / f"node{i}",
                    peers=urls,
                    self_url=urls[i],
                    peer_listen=f"127.0.0.1:{peer_ports[i]}",
                    peer_secret_file=secret_file,
                    peer_tls_cert=cert[0],
                    peer_tls_key=cert[1],
                    peer_ca_file=ca_file,
                    # A refused peer is left alone for the rest of the test.
                    peer_backoff=600,
                    **settings,
                )
            )
            for i in range(2)
        ]
        yield nodes, relays, urls


async def owned_blobs(upstream: str, name: str, urls: tuple[str, ...]) -> dict[str, bytes]:
    """One blob owned by each of ``urls`` (rendezvous ranking), pushed upstream."""
    found: dict[str, bytes] = {}
    for i in range(64):  # bounded: each URL owns about half of all digests
        data = random_bytes(300_000, f"{name}-{i}")
        owner = ranked(sha256_digest(data), urls)[0]
        if owner not in found:
            found[owner] = data
            await push_blob(upstream, name, data)
        if len(found) == len(urls):
            return found
    raise AssertionError("no blob for every owner in 64 tries")


def plain_in(wire: bytes, data: bytes) -> bool:
    """Whether any 64-byte window of ``data`` (every 4 KiB) is on the ``wire``."""
    return any(data[i : i + 64] in wire for i in range(0, len(data) - 64, 4096))


async def fetch(http: aiohttp.ClientSession, node: RunningProxy, name: str, data: bytes) -> bytes:
    async with http.get(f"{node.url}/v2/{name}/blobs/{sha256_digest(data)}") as resp:
        assert resp.status == 200
        return await resp.read()


async def test_two_nodes_pull_from_each_other_over_tls_never_in_clear(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    ca = Authority(tmp_path / "ca")
    cert = ca.issue("peer", "127.0.0.1")
    name = unique("peertls")
    async with (
        tls_pair(forwarder.url, tmp_path, secret_file, ca.cert_file, cert) as (nodes, relays, urls),
        aiohttp.ClientSession() as http,
    ):
        blobs = await owned_blobs(forwarder.url, name, urls)
        # Each node asks for the blob the other owns: it comes from the owner, which
        # fetched it from the upstream, across the other's relay.
        for asker, owner in ((nodes[1], urls[0]), (nodes[0], urls[1])):
            assert await fetch(http, asker, name, blobs[owner]) == blobs[owner]
        for data in blobs.values():
            assert forwarder.count("GET", f"/blobs/{sha256_digest(data)}") == 1
        for node in nodes:
            assert node.fills.stats.peer_gets >= 1
            assert node.cluster is not None and node.cluster.stats.tls_failures == 0
    for relay in relays:
        wire = bytes(relay.wire)
        assert len(wire) > 300_000, "the blob crossed this relay"
        assert wire[:1] == b"\x16", "the first bytes are a TLS handshake"
        for data in blobs.values():
            assert not plain_in(wire, data), "blob bytes in clear text on the wire"
            assert hashlib.sha256(data).hexdigest().encode() not in wire
        assert b"/_cacheproxy/peer" not in wire and b"X-Cacheproxy-Peer" not in wire


async def test_a_peer_certificate_from_another_ca_is_refused_and_the_upstream_serves(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path
) -> None:
    ca = Authority(tmp_path / "ca")
    other = Authority(tmp_path / "other", "someone else's CA")
    cert = ca.issue("peer", "127.0.0.1")
    name = unique("peertls")
    async with (
        tls_pair(forwarder.url, tmp_path, secret_file, other.cert_file, cert) as (
            nodes,
            relays,
            urls,
        ),
        aiohttp.ClientSession() as http,
    ):
        blobs = await owned_blobs(forwarder.url, name, urls)
        data = blobs[urls[0]]
        assert await fetch(http, nodes[1], name, data) == data
        # The asker could not verify its owner: it fetched the blob itself.
        assert forwarder.count("GET", f"/blobs/{sha256_digest(data)}") == 1
        assert nodes[1].fills.stats.peer_gets == 0
        assert nodes[1].fills.stats.upstream_gets >= 1
        assert nodes[0].fills.stats.upstream_gets == 0, "the owner was never asked"
        cluster = nodes[1].cluster
        assert cluster is not None and cluster.stats.tls_failures >= 1
        async with http.get(f"{nodes[1].url}/metrics") as resp:
            metrics = await resp.text()
        tls = 'cacheproxy_peer_failures_total{kind="tls"}'
        counted = [float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(tls)]
        assert counted and counted[0] >= 1, metrics
    assert not plain_in(bytes(relays[0].wire), data)


@pytest.mark.parametrize("named", [True, False])
async def test_one_certificate_for_every_node_by_peer_tls_name(
    forwarder: Forwarder, tmp_path: Path, secret_file: Path, named: bool
) -> None:
    # A DaemonSet's peers are reached by IP; one certificate naming the cluster
    # (no IP in it) serves every node when peer_tls_name says that is the name.
    ca = Authority(tmp_path / "ca")
    cert = ca.issue("peer", "cacheproxy-peer.cacheproxy.svc")
    name = unique("peertls")
    settings = {"peer_tls_name": "cacheproxy-peer.cacheproxy.svc"} if named else {}
    async with (
        tls_pair(forwarder.url, tmp_path, secret_file, ca.cert_file, cert, **settings) as (
            nodes,
            _,
            urls,
        ),
        aiohttp.ClientSession() as http,
    ):
        blobs = await owned_blobs(forwarder.url, name, urls)
        data = blobs[urls[0]]
        assert await fetch(http, nodes[1], name, data) == data
        cluster = nodes[1].cluster
        assert cluster is not None
        if named:
            assert nodes[1].fills.stats.peer_gets == 1 and cluster.stats.tls_failures == 0
        else:  # the certificate does not name 127.0.0.1: refused
            assert nodes[1].fills.stats.peer_gets == 0 and cluster.stats.tls_failures >= 1
