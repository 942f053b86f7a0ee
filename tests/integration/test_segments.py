"""One blob over several connections, against the real registry behind a per-connection
throttle (nginx ``limit_rate``, as the benchmarks use): the bytes, the requests the
throttle logged, and every way a segment can break.

The throttle's access log shows what the upstream sent: each blob GET with its
``Range`` and its body bytes, so "bytes fetched == blob size" is read there, not
from the proxy's own counters alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from benchmarks.anchors import LogMark, Throttle, UpstreamTraffic
from cacheproxy.blobs.source import Want
from cacheproxy.oci import parse_digest
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import push_blob, random_bytes
from tests.support.process import serve_process
from tests.support.proxy import assert_cached, running_proxy
from tests.support.registry import RegistryProcess, free_port

pytestmark = pytest.mark.timeout(90)

KIB = 1024
MIB = 1 << 20
SEGMENT = 256 * KIB
#: Bytes per second on each connection through the throttle.
RATE = 2_000_000
SEGMENTS = {"upstream_segments": 4, "segment_min_size": "256KiB"}
GET = frozenset({"GET"})


@pytest.fixture
def throttle(
    require_binaries: None, registry: RegistryProcess, tmp_path: Path
) -> Iterator[Throttle]:
    nginx = Throttle(tmp_path / "throttle", registry.host, str(RATE))
    nginx.start()
    yield nginx
    nginx.terminate()


@pytest.fixture
async def faulty(throttle: Throttle) -> AsyncIterator[Forwarder]:
    """Faults on the way to the throttle (proxy -> forwarder -> nginx -> registry)."""
    async with Forwarder(throttle.url) as fwd:
        yield fwd


async def new_blob(registry: RegistryProcess, size: int) -> tuple[str, str, bytes]:
    name = f"segments/{uuid.uuid4().hex[:10]}"
    data = random_bytes(size, name)
    return name, await push_blob(registry.url, name, data), data


async def get(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


async def logged(throttle: Throttle, mark: LogMark) -> UpstreamTraffic:
    """What the throttle logged since ``mark``, once it has nothing in flight."""
    assert await asyncio.to_thread(throttle.quiesce, 30.0)
    return throttle.since(mark)


def starts(asks: list[str | None]) -> list[int]:
    """The first byte each ``Range`` asked for (no Range: 0)."""
    out = []
    for ask in asks:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", ask or "bytes=0-")
        assert match is not None, ask
        out.append(int(match[1]))
    return out


# --- the segmented fill -----------------------------------------------------------------


async def test_blob_comes_in_segments_every_byte_once(
    throttle: Throttle, registry: RegistryProcess, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(registry, 3 * MIB + 4321)
    mark = throttle.mark()
    async with running_proxy(throttle.url, tmp_path / "cache", **SEGMENTS) as proxy:
        assert await get(http, f"{proxy.url}/v2/{name}/blobs/{digest}") == data
        await assert_cached(proxy, digest, data)
        stats = proxy.fills.stats
        assert (stats.upstream_bytes, stats.resumed, stats.single_stream) == (len(data), 0, 0)
        async with http.get(f"{proxy.url}/metrics") as resp:
            metrics = await resp.text()
        assert f"cacheproxy_fill_segments_total {float(stats.segments)}" in metrics
        assert stats.segments > 0
    gets = (await logged(throttle, mark)).blob(digest)
    assert len(gets) > 1, "one stream: the blob was not segmented"
    assert all(g.status == 206 and g.range for g in gets)
    assert gets[0].range == f"bytes=0-{SEGMENT - 1}"  # the first asks before the size is known
    asked = starts([g.range for g in gets])
    assert len(set(asked)) == len(asked), "a byte range was asked twice"
    # Amplification 1.00: the upstream sent exactly the blob.
    assert sum(g.body_bytes for g in gets) == len(data)


async def test_blob_no_bigger_than_a_segment_comes_in_one_stream(
    throttle: Throttle, registry: RegistryProcess, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, data = await new_blob(registry, SEGMENT)
    mark = throttle.mark()
    async with running_proxy(throttle.url, tmp_path / "cache", **SEGMENTS) as proxy:
        assert await get(http, f"{proxy.url}/v2/{name}/blobs/{digest}") == data
        await assert_cached(proxy, digest, data)
    gets = (await logged(throttle, mark)).blob(digest)
    assert [(g.range, g.status, g.body_bytes) for g in gets] == [
        (f"bytes=0-{SEGMENT - 1}", 206, len(data))
    ]


@pytest.mark.parametrize("kind", ["truncate", "stall", "abort"])
async def test_broken_segment_resumes_from_its_own_offset(
    kind: str,
    faulty: Forwarder,
    registry: RegistryProcess,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    """The third segment breaks 100 kB in (a short body, a stall past the read
    timeout, a reset): it alone is asked again, from where it broke."""
    name, digest, data = await new_blob(registry, 3 * MIB)
    third = 2 * SEGMENT
    fault = faulty.set_fault(
        Fault(match=digest, kind=kind, offset=100_000, once=True, methods=GET, range_start=third)  # type: ignore[arg-type]
    )
    settings = {**SEGMENTS, "read_timeout": 1.0}  # a stalled segment is cut after 1 s
    async with running_proxy(faulty.url, tmp_path / "cache", **settings) as proxy:
        assert await get(http, f"{proxy.url}/v2/{name}/blobs/{digest}") == data
        await assert_cached(proxy, digest, data)
        assert fault.hits == 1
        assert proxy.fills.stats.resumed == 1
        # Nothing on disk was fetched again.
        assert proxy.fills.stats.upstream_bytes == len(data)
    asked = starts(faulty.ranges("GET", f"/blobs/{digest}"))
    resumed = [a for a in asked if third < a <= third + 100_000]
    assert len(resumed) == 1, asked
    assert len(set(asked)) == len(asked)


async def test_every_segment_breaking_fails_within_the_retry_budget(
    faulty: Forwarder, registry: RegistryProcess, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name, digest, _ = await new_blob(registry, 2 * MIB)
    faulty.set_fault(Fault(match=digest, kind="truncate", offset=50_000, methods=GET))
    async with running_proxy(faulty.url, tmp_path / "cache", **SEGMENTS) as proxy:
        with pytest.raises(aiohttp.ClientPayloadError):
            await get(http, f"{proxy.url}/v2/{name}/blobs/{digest}")
        await proxy.idle()
        assert not proxy.blob_path(digest).exists()
        assert proxy.temp_files() == []
        assert proxy.fills.stats.resumed == 3  # one budget for the whole blob


# --- upstreams that mishandle ranges ------------------------------------------------------


async def test_upstream_that_ignores_ranges_gets_one_stream_and_is_remembered(
    require_binaries: None,
    registry: RegistryProcess,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    nginx = Throttle(tmp_path / "no-ranges", registry.host, str(RATE), ranges=False)
    nginx.start()
    try:
        first, second = [await new_blob(registry, 2 * MIB) for _ in range(2)]
        mark = nginx.mark()
        async with running_proxy(nginx.url, tmp_path / "cache", **SEGMENTS) as proxy:
            for name, digest, data in (first, second):
                assert await get(http, f"{proxy.url}/v2/{name}/blobs/{digest}") == data
                await assert_cached(proxy, digest, data)
            assert proxy.fills.stats.single_stream == 1
            assert proxy.fills.ranges.ignored_by(proxy.upstreams.get().name)
            assert proxy.fills.stats.upstream_bytes == len(first[2]) + len(second[2])
        traffic = await logged(nginx, mark)
    finally:
        nginx.terminate()
    # The first blob: asked as a range, answered whole (200), taken as it came.
    gets = traffic.blob(first[1])
    assert [(g.range, g.status, g.body_bytes) for g in gets] == [
        (f"bytes=0-{SEGMENT - 1}", 200, len(first[2]))
    ]
    # The second: one stream from the start, no range asked.
    gets = traffic.blob(second[1])
    assert [(g.range, g.status, g.body_bytes) for g in gets] == [(None, 200, len(second[2]))]


# --- a registry that redirects to storage ---------------------------------------------------


async def test_storage_url_is_reused_by_segments_without_credentials(
    throttle: Throttle, registry: RegistryProcess, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The registry (Basic auth) redirects blobs to storage on another host that
    throttles each connection. Segments go to the signed URL directly, never with
    the credentials; a refused signature sends that segment back to the registry."""
    user, password = "robot", "s3cret-value"
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    authorized: list[str] = []
    signatures = iter(range(1, 100))

    async with Forwarder(throttle.url, host="127.0.0.2") as storage:

        async def registry_app(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
            if request.path == "/v2/":
                return web.json_response({})
            authorized.append(request.path)
            # A fresh signature on every redirect, as S3 presigning gives.
            target = f"{storage.url}{request.path}?X-Amz-Signature=sig{next(signatures)}"
            return web.Response(status=307, headers={"Location": target})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", registry_app)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            config = tmp_path / "c.toml"
            config.write_text(
                f'presets = []\nupstream_segments = 4\nsegment_min_size = "256KiB"\n'
                f'[[upstream]]\nurl = "http://127.0.0.1:{port}"\n'
                f'username = "{user}"\npassword = "{password}"\n'
            )
            first, second = [await new_blob(registry, 2 * MIB) for _ in range(2)]
            # The second blob's storage URL "expires" for its third segment.
            storage.set_fault(
                Fault(
                    match=second[1], kind="status", status=403, once=True, range_start=2 * SEGMENT
                )
            )
            async with running_proxy(None, tmp_path / "cache", config_file=config) as proxy:
                for name, digest, data in (first, second):
                    assert await get(http, f"{proxy.url}/v2/{name}/blobs/{digest}") == data
                    await assert_cached(proxy, digest, data)
                assert proxy.fills.stats.resumed == 0  # a refused URL is no broken body
        finally:
            await runner.cleanup()

        blob_requests = [
            (path, headers)
            for (method, path), headers in zip(
                storage.requests, storage.request_headers, strict=True
            )
            if method == "GET"
        ]
    assert blob_requests
    assert all("Authorization" not in headers for _, headers in blob_requests)
    assert password not in repr(blob_requests)
    first_at_storage = [p for p, _ in blob_requests if first[1] in p]
    assert len(first_at_storage) > 1, "the storage URL was not reused by the segments"
    assert {p.rpartition("=")[2] for p in first_at_storage} == {"sig1"}
    # The registry was asked once for the first blob; for the second, again after
    # the refusal (by at most each of the 4 lanes), never once per segment (8).
    assert [p for p in authorized if first[1] in p] == [f"/v2/{first[0]}/blobs/{first[1]}"]
    assert 2 <= len([p for p in authorized if second[1] in p]) <= 1 + 4
    second_sigs = [p.rpartition("=")[2] for p, _ in blob_requests if second[1] in p]
    assert second_sigs[0] == "sig2" and "sig3" in second_sigs
    assert len(second_sigs) > len(set(second_sigs)), "no signed URL served two segments"


# --- readers ---------------------------------------------------------------------------------


async def test_range_far_ahead_of_the_prefix_is_served_as_it_lands(
    faulty: Forwarder, registry: RegistryProcess, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The first segment stalls; a client's range near the end is asked for next and
    sent as soon as it is on disk, all but its last byte, which waits for the
    whole blob to be verified."""
    name, digest, data = await new_blob(registry, 2 * MIB)
    size = len(data)
    stall = faulty.set_fault(
        Fault(match=digest, kind="stall", offset=0, once=True, methods=GET, range_start=0)
    )
    # Paced so that the second segment is still arriving when the range is asked.
    faulty.throttle_bps = 1_000_000
    settings = {"upstream_segments": 2, "segment_min_size": "256KiB"}
    lo, hi = size - 300_000, size - 200_001
    async with running_proxy(faulty.url, tmp_path / "cache", **settings) as proxy:
        want = Want(proxy.upstreams.get(), name, parse_digest(digest))
        headers = {"Range": f"bytes={lo}-{hi}"}
        async with http.get(f"{proxy.url}/v2/{name}/blobs/{digest}", headers=headers) as resp:
            assert resp.status == 206
            head = await resp.content.readexactly(hi - lo)
            assert head == data[lo:hi]
            fill = proxy.fills.running(want)
            assert fill is not None
            assert fill.progress() == 0, "the start of the blob is still stalled"
            stall.release()
            assert head + await resp.content.read() == data[lo : hi + 1]
        await assert_cached(proxy, digest, data)
    asked = starts(faulty.ranges("GET", f"/blobs/{digest}"))
    # Asked right after the two segments the fill began with.
    assert any(lo <= a <= hi for a in asked[:3]), asked
    assert len(set(asked)) == len(asked)


# --- a crash mid-fill ------------------------------------------------------------------------


async def test_kill_9_mid_segmented_fill_keeps_nothing_and_restart_cleans_tmp(
    require_binaries: None, registry: RegistryProcess, tmp_path: Path
) -> None:
    slow = Throttle(tmp_path / "slow", registry.host, "250000")
    slow.start()
    cache = tmp_path / "cache"
    args = ("--upstream", slow.url, "--cache-dir", str(cache))
    env = {"CACHEPROXY_UPSTREAM_SEGMENTS": "4", "CACHEPROXY_SEGMENT_MIN_SIZE": "256KiB"}
    log = tmp_path / "serve.log"
    blobs = [await new_blob(registry, 3 * MIB) for _ in range(2)]
    try:
        async with (
            serve_process(*args, env=env, log=log) as (proc, url),
            aiohttp.ClientSession() as http,
        ):
            responses = [await http.get(f"{url}/v2/{n}/blobs/{d}") for n, d, _ in blobs]
            try:
                for resp in responses:
                    assert resp.status == 200
                    await resp.content.readexactly(200 * KIB)
                assert len(list((cache / "tmp").iterdir())) == len(blobs), "fills under way"
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
            finally:
                for resp in responses:
                    resp.close()
        assert [p for p in (cache / "blobs").rglob("*") if p.is_file()] == []
        assert list((cache / "tmp").iterdir()) != []  # what the crash left

        async with (
            serve_process(*args, env=env, log=log) as (proc, url),
            aiohttp.ClientSession() as http,
        ):
            assert list((cache / "tmp").iterdir()) == []  # cleaned at start
            for name, digest, data in blobs:
                async with http.get(f"{url}/v2/{name}/blobs/{digest}") as resp:
                    assert await resp.read() == data
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
    finally:
        slow.terminate()
    for _, digest, _ in blobs:
        hexpart = digest.split(":")[1]
        stored = cache / "blobs/sha256" / hexpart[:2] / hexpart
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == hexpart
    assert list((cache / "tmp").iterdir()) == []
    assert "Traceback" not in log.read_text()
