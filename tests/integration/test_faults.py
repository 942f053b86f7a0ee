"""Fault injection: every way an upstream (or a client) breaks a transfer, and what follows.

The forwarder (tests/support/forwarder.py) sits between the proxy and the real registry
and breaks responses on command. For each fault a test proves both halves of the
promise: what the client sees (the exact bytes, or a broken transfer; never a clean
end of a wrong body) and what the cache keeps (the blob, verified, or nothing; no temp
file once the fills have ended). Faults already covered elsewhere are not repeated:
test_pull.py has a corrupt middle byte, one truncation resumed, and the mapping of
upstream statuses to OCI errors; test_cli.py has one kill -9 mid-fill.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.support.clients import run_process
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    push_blob,
    push_image,
    random_bytes,
    sha256_digest,
)
from tests.support.names import unique
from tests.support.ports import free_port
from tests.support.process import crash, serve_process
from tests.support.proxy import RunningProxy, assert_cached, blob_url, running_proxy
from tests.support.waiting import eventually

MIB = 1 << 20
SIZE = 1 * MIB + 12_345  # not a multiple of any chunk size
GET = frozenset({"GET"})
# A fill's first request asks for its first segment (segment_min_size, 8 MiB by
# default) and learns the size from Content-Range; these blobs fit in it.
FIRST_ASK = f"bytes=0-{8 * MIB - 1}"
ALL_MANIFESTS = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

pytestmark = pytest.mark.timeout(60)


@dataclass
class Outcome:
    """What one client got: the status, every body byte, and whether it broke."""

    status: int
    body: bytes
    broken: bool
    headers: dict[str, str]


async def fetch(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Outcome:
    """GET *url*, keeping every byte received even when the transfer breaks."""
    got = bytearray()
    async with http.get(url, headers=headers or {}) as resp:
        try:
            async for chunk in resp.content.iter_any():
                got += chunk
        except aiohttp.ClientPayloadError:
            return Outcome(resp.status, bytes(got), True, dict(resp.headers))
        return Outcome(resp.status, bytes(got), False, dict(resp.headers))


def assert_exact(outcome: Outcome, data: bytes) -> None:
    assert not outcome.broken, "the transfer broke"
    assert outcome.status == 200
    assert len(outcome.body) == len(data)
    assert outcome.body == data


def assert_broken(outcome: Outcome, data: bytes) -> None:
    """A broken transfer: the client can tell it did not get the blob."""
    assert outcome.status == 200
    assert outcome.broken, "a wrong body ended cleanly"
    assert outcome.body != data


async def assert_not_cached(proxy: RunningProxy, digest: str) -> None:
    await proxy.idle()
    assert not proxy.blob_path(digest).exists(), "an unverified blob was kept"
    assert proxy.temp_files() == []


async def new_blob(forwarder: Forwarder, prefix: str, size: int = SIZE) -> tuple[str, str, bytes]:
    name = unique(f"faults/{prefix}")
    data = random_bytes(size, name)
    digest = await push_blob(forwarder.url, name, data)
    return name, digest, data


def _range_start(header: str | None) -> int:
    """Where a resume starts: ``bytes=N-`` -> N; no Range header -> 0."""
    if header is None:
        return 0
    match = re.fullmatch(r"bytes=(\d+)-", header)
    assert match is not None, f"a resume must ask for an open range, not {header!r}"
    return int(match[1])


# --- truncated bodies ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["0", "1", "65535", "65536", "middle", "size-1"])
async def test_body_truncated_once_is_resumed_from_where_it_broke(
    where: str, proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "truncate")
    offset = {"middle": SIZE // 2, "size-1": SIZE - 1}.get(where) or int(where)
    forwarder.set_fault(Fault(match=digest, kind="truncate", offset=offset, once=True, methods=GET))

    assert_exact(await fetch(http, blob_url(proxy, name, digest)), data)
    # One broken body, one resume asking for the rest (RFC 9110 14.2): from the bytes
    # the fill had consumed, which may be fewer than had arrived (aiohttp raises the
    # broken body before handing out what it still buffers).
    first, resume = forwarder.ranges("GET", f"/blobs/{digest}")
    assert first == FIRST_ASK
    assert _range_start(resume) <= offset
    assert proxy.fills.stats.resumed == 1
    await assert_cached(proxy, digest, data)


@pytest.mark.wallclock
async def test_body_truncated_on_every_attempt_breaks_the_transfer(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "truncate-always")
    # Every response (each resume too) breaks 100 kB in: the fill gives up after its
    # bounded resumes, and the client sees a broken transfer, not a short clean one.
    forwarder.set_fault(Fault(match=digest, kind="truncate", offset=100_000, methods=GET))
    started = time.monotonic()
    assert_broken(await fetch(http, blob_url(proxy, name, digest)), data)
    assert time.monotonic() - started < 15
    assert forwarder.count("GET", f"/blobs/{digest}") == 4  # the first try and 3 resumes
    await assert_not_cached(proxy, digest)


# --- stalls ----------------------------------------------------------------------------


async def test_stall_shorter_than_read_timeout_is_waited_out(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "stall-short")
    stall = forwarder.set_fault(Fault(match=digest, kind="stall", offset=300_000, methods=GET))
    url = blob_url(proxy, name, digest)
    clients = [asyncio.create_task(fetch(http, url)) for _ in range(2)]
    await eventually(
        lambda: proxy.fills.stats.upstream_bytes >= 300_000,
        timeout=10,
        what="the fill holding everything the upstream sent before it stalled",
    )
    assert not any(c.done() for c in clients), "nobody can finish while the upstream stalls"
    stall.release()
    for outcome in await asyncio.gather(*clients):
        assert_exact(outcome, data)
    assert forwarder.count("GET", f"/blobs/{digest}") == 1
    await assert_cached(proxy, digest, data)


@pytest.mark.wallclock
async def test_stall_beyond_read_timeout_is_cut_and_resumed(
    forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "stall-long")
    forwarder.set_fault(Fault(match=digest, kind="stall", offset=300_000, once=True, methods=GET))
    async with running_proxy(forwarder.url, tmp_path / "cache", read_timeout=1.0) as proxy:
        started = time.monotonic()
        assert_exact(await fetch(http, blob_url(proxy, name, digest)), data)
        assert time.monotonic() - started >= 1.0
        first, resume = forwarder.ranges("GET", f"/blobs/{digest}")
        assert first == FIRST_ASK
        assert 0 < _range_start(resume) <= 300_000
        assert proxy.fills.stats.resumed == 1
        await assert_cached(proxy, digest, data)


@pytest.mark.wallclock
async def test_upstream_stalled_for_good_ends_in_a_broken_transfer_in_bounded_time(
    forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "stall-forever")
    # Every response stalls 50 kB in; each resume gets 50 kB further, never to the end.
    forwarder.set_fault(Fault(match=digest, kind="stall", offset=50_000, methods=GET))
    async with running_proxy(forwarder.url, tmp_path / "cache", read_timeout=0.5) as proxy:
        started = time.monotonic()
        assert_broken(await fetch(http, blob_url(proxy, name, digest)), data)
        # 4 read timeouts and 3 backoffs (0.5 + 1 + 2 s), not a hang.
        assert time.monotonic() - started < 12
        assert forwarder.count("GET", f"/blobs/{digest}") == 4
        await assert_not_cached(proxy, digest)
    forwarder.clear_faults()


# --- wrong bytes, wrong lengths ----------------------------------------------------------


@pytest.mark.parametrize("where", ["first", "last"])
async def test_corrupt_byte_breaks_every_reader_and_is_never_cached(
    where: str, proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "corrupt")
    offset = 0 if where == "first" else SIZE - 1
    forwarder.set_fault(Fault(match=digest, kind="corrupt", offset=offset, methods=GET))
    forwarder.throttle_bps = 4 * MIB  # slow enough that both readers join one fill
    url = blob_url(proxy, name, digest)
    for outcome in await asyncio.gather(fetch(http, url), fetch(http, url)):
        assert_broken(outcome, data)
        if where == "last":
            # The flipped byte is the one held back until verification: never sent.
            assert data[:-1].startswith(outcome.body)
    assert forwarder.count("GET", f"/blobs/{digest}") == 1
    assert proxy.fills.stats.digest_mismatches == 1
    await assert_not_cached(proxy, digest)


@pytest.mark.parametrize("announced", ["shorter", "longer"])
async def test_wrong_content_length_is_never_cached_or_served_clean(
    announced: str, forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, f"length-{announced}")
    length = SIZE - 1000 if announced == "shorter" else SIZE + 1000
    forwarder.set_fault(Fault(match=digest, kind="length", offset=length, once=True, methods=GET))
    # One stream, no Range: only the Content-Length announces the size.
    async with running_proxy(forwarder.url, tmp_path / "cache", upstream_segments=1) as proxy:
        outcome = await fetch(http, blob_url(proxy, name, digest))
        assert outcome.status == 200
        assert outcome.broken, "a body of the wrong length ended cleanly"
        assert int(outcome.headers["Content-Length"]) == length
        await assert_not_cached(proxy, digest)

        # The next request starts a new fill, which gets the real blob.
        assert_exact(await fetch(http, blob_url(proxy, name, digest)), data)
        await assert_cached(proxy, digest, data)


@pytest.mark.parametrize("announced", ["shorter", "longer"])
async def test_length_disagreeing_with_content_range_means_one_stream(
    announced: str, proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    """A first segment whose Content-Length is not the length of its Content-Range
    is refused before a byte is served; the blob comes in one stream instead."""
    name, digest, data = await new_blob(forwarder, f"length-range-{announced}")
    length = SIZE - 1000 if announced == "shorter" else SIZE + 1000
    forwarder.set_fault(Fault(match=digest, kind="length", offset=length, once=True, methods=GET))
    assert_exact(await fetch(http, blob_url(proxy, name, digest)), data)
    await assert_cached(proxy, digest, data)
    assert forwarder.ranges("GET", f"/blobs/{digest}") == [FIRST_ASK, None]
    assert proxy.fills.stats.single_stream == 1


@pytest.mark.parametrize("segments", [1, 4])
async def test_upstream_without_content_length_is_streamed_and_verified(
    segments: int, forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "chunked")
    forwarder.set_fault(Fault(match=digest, kind="length", offset=-1, methods=GET))
    settings = {"upstream_segments": segments}
    async with running_proxy(forwarder.url, tmp_path / "cache", **settings) as proxy:
        outcome = await fetch(http, blob_url(proxy, name, digest))
        assert_exact(outcome, data)
        if segments == 1:
            assert "Content-Length" not in outcome.headers  # streamed chunked as it landed
        else:
            # The answer to the first segment's range says the size (Content-Range).
            assert int(outcome.headers["Content-Length"]) == len(data)
        await assert_cached(proxy, digest, data)


async def test_corrupt_byte_inside_a_range_of_a_filling_blob_is_never_served_clean(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    """A range that ends before the blob does is no exception to "never a clean wrong
    body": its bytes cannot be verified before the whole blob is, so its end must wait
    for that verification (or the transfer must break)."""
    name, digest, _ = await new_blob(forwarder, "corrupt-range")
    forwarder.set_fault(Fault(match=digest, kind="corrupt", offset=1000, methods=GET))
    outcome = await fetch(http, blob_url(proxy, name, digest), {"Range": "bytes=0-99999"})
    assert outcome.status in (206, 502, 503)
    if outcome.status == 206:
        assert outcome.broken, "a range with a corrupt byte in it ended cleanly"
    await assert_not_cached(proxy, digest)


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_corrupt_manifest_is_never_served_or_cached(
    by: str, proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("faults/corrupt-manifest")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(1000,))
    reference = "v1" if by == "tag" else image.digest
    forwarder.set_fault(Fault(match=f"/v2/{name}/manifests/", kind="corrupt", offset=20))
    url = f"{proxy.url}/v2/{name}/manifests/{reference}"
    outcome = await fetch(http, url, {"Accept": ALL_MANIFESTS})
    assert not outcome.broken
    assert outcome.status == 502
    assert b'"UNAVAILABLE"' in outcome.body
    await proxy.idle()
    assert [p for p in (proxy.config.cache_dir / "blobs").rglob("*") if p.is_file()] == []
    assert proxy.temp_files() == []

    forwarder.clear_faults()
    outcome = await fetch(http, url, {"Accept": ALL_MANIFESTS})
    assert (outcome.status, outcome.body) == (200, image.manifest)


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_oversized_manifest_is_refused_and_not_cached(
    by: str, proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("faults/huge-manifest")
    body = b'{"schemaVersion": 2, "x": "' + b"a" * (4 * MIB + 1) + b'"}'
    digest = sha256_digest(body)
    reference = "v1" if by == "tag" else digest
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest}
    forwarder.set_fault(
        Fault(match=f"/v2/{name}/manifests/", kind="status", status=200, headers=headers, body=body)
    )
    outcome = await fetch(http, f"{proxy.url}/v2/{name}/manifests/{reference}")
    assert not outcome.broken
    assert outcome.status == 502
    assert b'"UNAVAILABLE"' in outcome.body
    await proxy.idle()
    assert not proxy.blob_path(digest).exists()
    assert proxy.temp_files() == []


# --- resets and refused connections ---------------------------------------------------


async def test_reset_before_the_answer_is_retried(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "reset")
    # Two resets: aiohttp's client silently retries one itself, the proxy the other.
    fault = forwarder.set_fault(Fault(match=digest, kind="reset", times=2, methods=GET))
    assert_exact(await fetch(http, blob_url(proxy, name, digest)), data)
    assert fault.hits == 2
    await assert_cached(proxy, digest, data)


async def test_reset_mid_body_is_resumed(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "abort")
    forwarder.set_fault(Fault(match=digest, kind="abort", offset=400_000, once=True, methods=GET))
    assert_exact(await fetch(http, blob_url(proxy, name, digest)), data)
    first, resume = forwarder.ranges("GET", f"/blobs/{digest}")
    assert first == FIRST_ASK
    # An RST may lose bytes in flight: the resume starts at what really arrived.
    assert 0 <= _range_start(resume) <= 400_000
    await assert_cached(proxy, digest, data)


@pytest.mark.wallclock
async def test_reset_every_time_ends_in_unavailable_within_the_budget(
    forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, _ = await new_blob(forwarder, "reset-always")
    forwarder.set_fault(Fault(match=digest, kind="reset", methods=GET))
    async with running_proxy(
        forwarder.url, tmp_path / "cache", upstream_retries=2, upstream_retry_budget=3.0
    ) as proxy:
        started = time.monotonic()
        outcome = await fetch(http, blob_url(proxy, name, digest))
        assert time.monotonic() - started < 3.0 + 2.0
        assert outcome.status == 503
        assert b'"UNAVAILABLE"' in outcome.body
        await assert_not_cached(proxy, digest)


@pytest.mark.wallclock
async def test_unreachable_upstream_is_unavailable_within_the_budget(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # a port nobody listens on
    async with running_proxy(dead, tmp_path / "cache", upstream_retry_budget=2.0) as proxy:
        started = time.monotonic()
        outcome = await fetch(http, blob_url(proxy, "faults/gone", sha256_digest(b"x")))
        assert time.monotonic() - started < 2.0 + 2.0
        assert outcome.status == 503
        assert b'"UNAVAILABLE"' in outcome.body
        assert proxy.temp_files() == []


# --- 5xx and 429 ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_once_then_ok_is_retried(
    status: int, proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, f"status-{status}")
    forwarder.set_fault(Fault(match=digest, kind="status", status=status, once=True, methods=GET))
    assert_exact(await fetch(http, blob_url(proxy, name, digest)), data)
    assert forwarder.count("GET", f"/blobs/{digest}") == 2
    await assert_cached(proxy, digest, data)


async def test_5xx_once_on_a_tag_is_retried(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name = unique("faults/status-tag")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(1000,))
    forwarder.set_fault(Fault(match=f"/v2/{name}/manifests/v1", kind="status", once=True))
    outcome = await fetch(http, f"{proxy.url}/v2/{name}/manifests/v1", {"Accept": ALL_MANIFESTS})
    assert (outcome.status, outcome.body) == (200, image.manifest)


@pytest.mark.wallclock
async def test_5xx_every_time_exhausts_the_retries(
    forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, _ = await new_blob(forwarder, "status-always")
    forwarder.set_fault(Fault(match=digest, kind="status", status=503, methods=GET))
    async with running_proxy(
        forwarder.url, tmp_path / "cache", upstream_retries=2, upstream_retry_budget=5.0
    ) as proxy:
        started = time.monotonic()
        outcome = await fetch(http, blob_url(proxy, name, digest))
        assert time.monotonic() - started < 5.0 + 1.0
        assert outcome.status == 503
        assert b'"UNAVAILABLE"' in outcome.body
        assert forwarder.count("GET", f"/blobs/{digest}") == 1 + 2
        await assert_not_cached(proxy, digest)


@pytest.mark.wallclock
async def test_5xx_retries_stop_at_the_budget(
    forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, _ = await new_blob(forwarder, "status-budget")
    forwarder.set_fault(Fault(match=digest, kind="status", status=502, methods=GET))
    async with running_proxy(
        forwarder.url, tmp_path / "cache", upstream_retries=50, upstream_retry_budget=1.2
    ) as proxy:
        started = time.monotonic()
        outcome = await fetch(http, blob_url(proxy, name, digest))
        assert time.monotonic() - started < 1.2 + 1.0
        assert outcome.status == 503
        # Backoff 0.5 s, then 1 s would pass the budget: two tries, not fifty.
        assert 2 <= forwarder.count("GET", f"/blobs/{digest}") <= 3
        await assert_not_cached(proxy, digest)


@pytest.mark.wallclock
async def test_429_with_retry_after_is_waited_out_then_retried(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "429")
    forwarder.set_fault(
        Fault(
            match=digest,
            kind="status",
            status=429,
            headers={"Retry-After": "1"},
            once=True,
            methods=GET,
        )
    )
    started = time.monotonic()
    assert_exact(await fetch(http, blob_url(proxy, name, digest)), data)
    assert time.monotonic() - started >= 0.95, "Retry-After: 1 was not honoured"
    assert forwarder.count("GET", f"/blobs/{digest}") == 2
    await assert_cached(proxy, digest, data)


@pytest.mark.wallclock
async def test_429_with_a_past_http_date_is_retried_at_once(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "429-date")
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    forwarder.set_fault(
        Fault(
            match=digest,
            kind="status",
            status=429,
            headers={"Retry-After": past},
            once=True,
            methods=GET,
        )
    )
    started = time.monotonic()
    assert_exact(await fetch(http, blob_url(proxy, name, digest)), data)
    assert time.monotonic() - started < 2.0
    assert forwarder.count("GET", f"/blobs/{digest}") == 2


@pytest.mark.wallclock
async def test_429_beyond_the_budget_goes_to_the_client_at_once(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, _ = await new_blob(forwarder, "429-long")
    forwarder.set_fault(
        Fault(
            match=digest,
            kind="status",
            status=429,
            headers={"Retry-After": "3600"},
            methods=GET,
        )
    )
    started = time.monotonic()
    outcome = await fetch(http, blob_url(proxy, name, digest))
    assert time.monotonic() - started < 2.0, "waited for a Retry-After past the budget"
    assert outcome.status == 429
    assert outcome.headers["Retry-After"] == "3600"
    assert b'"TOOMANYREQUESTS"' in outcome.body
    assert forwarder.count("GET", f"/blobs/{digest}") == 1
    await assert_not_cached(proxy, digest)


# --- connection limit ---------------------------------------------------------------------


async def test_upstream_connections_are_bounded(
    forwarder: Forwarder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    blobs = [await new_blob(forwarder, f"limit{i}", 200_000) for i in range(5)]
    forwarder.max_in_flight_by_method.clear()
    for _, digest, _ in blobs:
        forwarder.set_fault(Fault(match=digest, kind="stall", offset=0, methods=GET))
    async with running_proxy(forwarder.url, tmp_path / "cache", upstream_connections=2) as proxy:
        clients = [
            asyncio.create_task(fetch(http, blob_url(proxy, name, digest)))
            for name, digest, _ in blobs
        ]
        await eventually(
            lambda: (
                proxy.fills.active >= len(blobs)
                and sum(forwarder.count("GET", d) for _, d, _ in blobs) >= 2
            ),
            timeout=10,
            what="every fill started, two holding the two connections",
        )
        # An observation window, not a wait for something to happen: nothing may
        # happen in it, so no length of it can fail a correct proxy.
        await asyncio.sleep(0.5)
        assert sum(forwarder.count("GET", d) for _, d, _ in blobs) == 2
        # The blobs' GETs: a blob asked for by digest alone is confirmed first (a HEAD
        # on the connections manifests and tokens have apart from the blobs').
        assert forwarder.max_in_flight_by_method["GET"] <= 2
        forwarder.clear_faults()
        for outcome, (_, _, data) in zip(await asyncio.gather(*clients), blobs, strict=True):
            assert_exact(outcome, data)
        assert forwarder.max_in_flight_by_method["GET"] <= 2
        for _, digest, data in blobs:
            await assert_cached(proxy, digest, data)


# --- slow and departing clients -----------------------------------------------------------


async def _slow_reader(
    host: str, port: int, path: str, got: bytearray, pace: asyncio.Event, answered: asyncio.Event
) -> int:
    """A client with a small receive window reading 16 KiB per 50 ms until *pace* is
    set, then as fast as it can (*answered* is set once the head came). Returns the
    status."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        answered.set()
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
        while len(got) < length:
            chunk = await reader.read(16 * 1024 if not pace.is_set() else 1 << 20)
            if not chunk:
                break
            got += chunk
            if not pace.is_set():
                await asyncio.sleep(0.05)
        return status
    finally:
        writer.close()


@pytest.mark.wallclock
async def test_slow_client_neither_slows_a_fast_one_nor_is_buffered_for(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    size = 12 * MIB
    name, digest, data = await new_blob(forwarder, "slow-client", size)
    forwarder.throttle_bps = 24 * MIB  # the fill takes about half a second
    host, port = proxy.host.rsplit(":", 1)
    path = f"/v2/{name}/blobs/{digest}"
    slow_got = bytearray()
    fast_pace, slow_answered = asyncio.Event(), asyncio.Event()
    slow = asyncio.create_task(
        _slow_reader(host, int(port), path, slow_got, fast_pace, slow_answered)
    )
    async with asyncio.timeout(10):
        await slow_answered.wait()  # the slow client is reading the fill

    started = time.monotonic()
    assert_exact(await fetch(http, proxy.url + path), data)
    fast_time = time.monotonic() - started
    await proxy.idle()
    assert fast_time < 5.0, f"the fast client took {fast_time:.1f} s"
    assert len(slow_got) < size // 2, "the slow client was not slow"
    # Backpressure: for the stalled client the proxy holds at most a chunk or two in
    # memory (the kernel's socket buffers hold the rest), never the blob.
    buffers = proxy.write_buffers()
    assert buffers, "no client connection seen: the check would prove nothing"
    assert max(buffers) <= 2 * MIB + 64 * 1024

    fast_pace.set()
    async with asyncio.timeout(20):
        assert await slow == 200
    assert bytes(slow_got) == data
    await assert_cached(proxy, digest, data)


async def test_clients_that_leave_before_the_first_byte_leave_the_fill_running(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(forwarder, "leave-early")
    stall = forwarder.set_fault(Fault(match=digest, kind="stall", offset=0, methods=GET))
    url = blob_url(proxy, name, digest)
    for _ in range(3):
        async with http.get(url) as resp:
            assert resp.status == 200
            resp.close()  # gone before a single body byte
    assert proxy.fills.active == 1
    stall.release()
    await assert_cached(proxy, digest, data)
    assert forwarder.count("GET", f"/blobs/{digest}") == 1


async def test_departing_full_and_ranged_clients_do_not_disturb_the_one_that_stays(
    proxy: RunningProxy, forwarder: Forwarder, http: aiohttp.ClientSession
) -> None:
    size = 4 * MIB
    name, digest, data = await new_blob(forwarder, "leave-mid", size)
    forwarder.throttle_bps = 4 * MIB
    url = blob_url(proxy, name, digest)

    async def leave_after(n: int, headers: dict[str, str]) -> None:
        async with http.get(url, headers=headers) as resp:
            assert resp.status in (200, 206)
            await resp.content.readexactly(n)
            resp.close()

    stayer = asyncio.create_task(fetch(http, url))
    await asyncio.gather(
        leave_after(100_000, {}),
        leave_after(10, {"Range": "bytes=2000000-2999999"}),
        leave_after(500_000, {"Range": "bytes=100-"}),
    )
    assert_exact(await stayer, data)
    assert forwarder.count("GET", f"/blobs/{digest}") == 1
    await assert_cached(proxy, digest, data)


# --- kill -9 during several fills ------------------------------------------------------------


def _blob_files(cache: Path) -> list[Path]:
    return [p for p in (cache / "blobs").rglob("*") if p.is_file()]


async def _verify(cache: Path, upstream: str) -> str:
    result = await run_process(
        sys.executable,
        "-m",
        "cacheproxy",
        "verify",
        "--cache-dir",
        str(cache),
        "--upstream",
        upstream,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


async def test_kill_9_during_concurrent_fills_then_restart_and_verify(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    args = ("--upstream", forwarder.url, "--cache-dir", str(cache))
    log = tmp_path / "serve.log"
    done_name, done_digest, done_data = await new_blob(forwarder, "kill-done", 300_000)
    filling = [await new_blob(forwarder, f"kill-{i}", 3 * MIB) for i in range(4)]

    async with serve_process(*args, log=log) as (proc, url), aiohttp.ClientSession() as http:
        # One blob is complete before the crash: it must survive it.
        async with http.get(f"{url}/v2/{done_name}/blobs/{done_digest}") as resp:
            assert await resp.read() == done_data
        forwarder.throttle_bps = 2 * MIB
        responses = [
            await http.get(f"{url}/v2/{name}/blobs/{digest}") for name, digest, _ in filling
        ]
        try:
            for resp in responses:
                assert resp.status == 200
                await resp.content.readexactly(256 * 1024)
            assert len(list((cache / "tmp").iterdir())) >= len(filling), "fills under way"
            await crash(proc)
        finally:
            for resp in responses:
                resp.close()
    forwarder.throttle_bps = None

    for _, digest, _ in filling:
        hexpart = digest.split(":")[1]
        assert not (cache / "blobs/sha256" / hexpart[:2] / hexpart).exists()
    files = _blob_files(cache)
    assert await _verify(cache, forwarder.url) == f"verified {len(files)} blobs; removed 0"
    assert list((cache / "tmp").iterdir()) == []

    async with serve_process(*args, log=log) as (proc, url), aiohttp.ClientSession() as http:
        for name, digest, data in [(done_name, done_digest, done_data), *filling]:
            async with http.get(f"{url}/v2/{name}/blobs/{digest}") as resp:
                assert resp.status == 200
                assert await resp.read() == data
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    # The completed blob was never fetched again; every other one exactly once more.
    assert forwarder.count("GET", f"/blobs/{done_digest}") == 1

    files = _blob_files(cache)
    assert len(files) >= 1 + len(filling)
    for path in files:
        assert hashlib.new(path.parent.parent.name, path.read_bytes()).hexdigest() == path.name
    assert await _verify(cache, forwarder.url) == f"verified {len(files)} blobs; removed 0"
    assert "Traceback" not in log.read_text()
