"""aiohttp clients of the tests: a session whose connections come from a loopback
address of its own (another client, as the proxy's per-client bounds see it), and a
GET's status with its OCI error code."""

from __future__ import annotations

import re

import aiohttp


def session_from(address: str, *, total: float | None = None) -> aiohttp.ClientSession:
    """A client whose connections come from ``address``; ``total``: a bound on each
    request (seconds), else aiohttp's default."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    if total is None:
        return aiohttp.ClientSession(connector=connector)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=total))


async def status_of(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """(status, the OCI error code or "") of a GET."""
    async with http.get(url) as resp:
        body = await resp.read()
        if resp.status < 400:
            return resp.status, ""
        found = re.search(rb'"code"\s*:\s*"([A-Z_]+)"', body)
        return resp.status, found[1].decode() if found else ""
