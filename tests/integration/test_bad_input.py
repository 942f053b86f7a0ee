"""Bad requests get the spec's error JSON and status, never reach disk or upstream."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.support import rawhttp
from tests.support.forwarder import Forwarder
from tests.support.images import push_blob, random_bytes
from tests.support.names import unique
from tests.support.proxy import RunningProxy

HEX = "0" * 64


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v2/UPPER/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/a..b/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/a/-b/blobs/sha256:" + HEX, 400, "NAME_INVALID"),
        ("GET", "/v2/" + "a" * 300 + "/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/a/blobs/sha256:1234", 400, "DIGEST_INVALID"),
        ("GET", "/v2/a/blobs/sha999:" + HEX, 400, "DIGEST_INVALID"),
        ("HEAD", "/v2/a/blobs/latest", 400, "DIGEST_INVALID"),
        ("GET", "/v2/a/manifests/sha256:abc", 400, "DIGEST_INVALID"),
        ("GET", "/v2/a/manifests/.hidden", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/a/manifests/" + "t" * 200, 404, "MANIFEST_UNKNOWN"),
        ("PUT", "/v2/a/manifests/latest", 405, "UNSUPPORTED"),
        ("DELETE", "/v2/a/manifests/sha256:" + HEX, 405, "UNSUPPORTED"),
        ("DELETE", "/v2/a/blobs/sha256:" + HEX, 405, "UNSUPPORTED"),
        ("POST", "/v2/a/blobs/uploads/", 405, "UNSUPPORTED"),
        ("PATCH", "/v2/a/blobs/uploads/some-id", 405, "UNSUPPORTED"),
        ("PUT", "/v2/a/blobs/uploads/some-id?digest=sha256:" + HEX, 405, "UNSUPPORTED"),
        ("GET", "/v2/a/unknown/thing", 404, "NOT_FOUND"),
        ("GET", "/", 404, "NOT_FOUND"),
        ("GET", "/etc/passwd", 404, "NOT_FOUND"),
        ("GET", "/v2/a/tags/list?n=-1", 400, "UNSUPPORTED"),
        # Digits of other scripts: "\u0663" (Arabic-Indic three) and "\u00b2" (isdigit()
        # is true, int() raises): ASCII DIGIT only, answered 400, never a 500.
        ("GET", "/v2/a/tags/list?n=%D9%A3", 400, "UNSUPPORTED"),
        ("GET", "/v2/a/tags/list?n=%C2%B2", 400, "UNSUPPORTED"),
    ],
)
async def test_bad_requests_get_oci_errors(
    method: str, path: str, status: int, code: str, proxy: RunningProxy, forwarder: Forwarder
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, proxy.url + path) as resp,
    ):
        assert resp.status == status
        assert resp.headers["Content-Type"].startswith("application/json")
        if method != "HEAD":
            body = await resp.json()
            assert body["errors"][0]["code"] == code
            assert isinstance(body["errors"][0]["message"], str)
    assert forwarder.requests == [], "bad input must never reach the upstream"
    assert list((proxy.config.cache_dir / "blobs").iterdir()) == []
    assert list((proxy.config.cache_dir / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v2/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v2/%2e%2e/%2e%2e/etc/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        b"\x00\x01\x02\x03 binary junk\r\n\r\n",
        b"GET /v2/a/blobs/sha256:" + HEX.encode() + b" HTTP/1.1\r\nRange: bytes=zzz\r\n\r\n",
    ],
    ids=["dotdot", "encoded-dotdot", "garbage", "huge-header", "binary", "no-host"],
)
async def test_malformed_http_never_crashes(raw: bytes, proxy: RunningProxy) -> None:
    host, port = proxy.host.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500
    assert list((proxy.config.cache_dir / "blobs").iterdir()) == []


async def test_base_endpoint_and_api_version_header(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/v2/", "/v2"):
            async with http.get(proxy.url + path) as resp:
                assert resp.status == 200
                assert json.loads(await resp.read()) == {}
                assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_a_range_of_non_ascii_digits_is_ignored(
    proxy: RunningProxy, forwarder: Forwarder
) -> None:
    # RFC 9110 14.1.1: a range is 1*DIGIT, ASCII. "bytes=\u0663-" (an Arabic-Indic
    # three, sent as UTF-8 bytes) is no range: the header is ignored (14.2) and the
    # whole blob is sent, as for every other malformed Range; never 206 from byte 3.
    name = unique("range")
    data = random_bytes(4096, name)
    digest = await push_blob(forwarder.url, name, data)
    host, port = proxy.host.rsplit(":", 1)
    target = f"/v2/{name}/blobs/{digest}"
    for value in ("bytes=\u0663-".encode(), "bytes=0-\u0663".encode(), b"bytes=-\xef\xbc\x95"):
        resp = await asyncio.to_thread(
            rawhttp.request, (host, int(port)), "GET", target, [(b"Range", value)]
        )
        assert resp.status == 200, (value, resp.status)
        assert resp.header("Content-Range") is None
        assert resp.body == data
    ascii_range = await asyncio.to_thread(
        rawhttp.request, (host, int(port)), "GET", target, [(b"Range", b"bytes=3-")]
    )
    assert ascii_range.status == 206
    assert ascii_range.body == data[3:]
