"""Run ``cacheproxy serve`` as a real process, the way a user does."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.support.registry import free_port


@asynccontextmanager
async def serve_process(
    *args: str, env: Mapping[str, str] | None = None, log: Path, port: int | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Run ``cacheproxy serve ARGS`` and wait (bounded) until it answers /v2/."""
    port = port or free_port()
    full_env = {**os.environ, "CACHEPROXY_LISTEN": f"127.0.0.1:{port}", **(env or {})}
    with open(log, "ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cacheproxy",
            "serve",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=full_env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while True:
                try:
                    async with http.get(url + "/v2/") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert proc.returncode is None, log.read_text()
                await asyncio.sleep(0.1)
        yield proc, url
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
