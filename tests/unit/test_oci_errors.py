"""The error middleware: a process out of file descriptors is a 503 to retry, one
warning, not a 500 with a traceback."""

from __future__ import annotations

import errno
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cacheproxy.http.middleware import oci_errors


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
async def test_no_descriptor_free_is_a_503_to_retry_without_a_traceback(
    code: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def opens_a_file(request: web.Request) -> web.StreamResponse:
        raise OSError(code, "what the kernel said", "/cache/blobs/sha256/ab/abcd")

    app = web.Application(middlewares=[oci_errors])
    app.router.add_get("/v2/x/blobs/{digest}", opens_a_file)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v2/x/blobs/sha256:abcd")
        body = await resp.json()
    assert (resp.status, resp.headers["Retry-After"]) == (503, "1")
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert [r for r in caplog.records if r.exc_info] == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no file descriptor free" in warnings[0].getMessage()
