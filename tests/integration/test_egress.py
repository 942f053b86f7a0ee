"""egress_deny: an upstream cannot send the proxy to an address the operator denied."""

from __future__ import annotations

import errno
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.forwarder import Fault, Forwarder
from tests.support.images import push_blob, random_bytes
from tests.support.names import unique
from tests.support.proxy import running_proxy


@dataclass
class Storage:
    """An object store on a 127.0.0.X of its own that serves one blob and counts."""

    url: str
    data: bytes
    hits: list[str] = field(default_factory=list)


@asynccontextmanager
async def storage(data: bytes) -> AsyncIterator[Storage]:
    app = web.Application()
    found = Storage("", data)

    async def serve(request: web.Request) -> web.Response:
        found.hits.append(request.path)
        return web.Response(body=data)

    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        for _ in range(20):  # bounded: a free 127.0.0.X, port 0 picked by the kernel
            host = f"127.0.0.{random.randrange(10, 250)}"
            site = web.TCPSite(runner, host, 0)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            found.url = f"http://{host}:{port}"
            break
        else:
            raise AssertionError("no 127.0.0.X could be bound")
        yield found
    finally:
        await runner.cleanup()


async def get(url: str) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


async def test_a_redirect_into_the_deny_list_is_refused_and_never_dialled(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("egress")
    data = random_bytes(50_000, name)
    digest = await push_blob(forwarder.url, name, data)
    async with storage(data) as store:
        # The registry answers the blob GET with a 307 to "its object store": an
        # address in the cluster's pod range, as far as this proxy is concerned.
        forwarder.set_fault(
            Fault(
                f"/blobs/{digest}",
                "status",
                status=307,
                headers={"Location": f"{store.url}/bucket/{digest}?X-Amz-Signature=x"},
            )
        )
        blob = f"/v2/{name}/blobs/{digest}"
        # Without a deny list the proxy follows it (private and loopback ranges are
        # allowed for an upstream on loopback): the store is really there.
        async with running_proxy(forwarder.url, tmp_path / "open") as proxy:
            status, body, _ = await get(proxy.url + blob)
            assert (status, body) == (200, data)
        assert len(store.hits) == 1
        store.hits.clear()
        before = forwarder.count("GET", f"/blobs/{digest}")

        # 127.0.0.0/24 holds the store, and the upstream (127.0.0.1) too: the
        # upstream's own address is never denied, the redirect's target is.
        deny = "127.0.0.0/24"
        async with running_proxy(forwarder.url, tmp_path / "deny", egress_deny=deny) as proxy:
            status, body, kind = await get(proxy.url + blob)
            assert status == 502
            assert kind.startswith("application/json")
            error = json.loads(body)["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            # Refused at once: asking the upstream again gets the same redirect.
            assert forwarder.count("GET", f"/blobs/{digest}") == before + 1
            assert store.hits == [], "a denied address is never dialled"
            assert not proxy.blob_path(digest).exists()
            # The upstream itself, inside the denied range, still answers.
            forwarder.clear_faults()
            status, body, _ = await get(proxy.url + blob)
            assert (status, body) == (200, data)
        assert store.hits == []
