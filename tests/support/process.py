"""Run ``cacheproxy serve`` as a real process, the way a user does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
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


@contextlib.contextmanager
def serve_process_sync(
    *args: str, env: Mapping[str, str] | None = None, log: Path, port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """:func:`serve_process` for synchronous tests (module fixtures, blocking clients)."""
    port = port or free_port()
    full_env = {**os.environ, "CACHEPROXY_LISTEN": f"127.0.0.1:{port}", **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cacheproxy", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=full_env,
        )
    url = f"http://127.0.0.1:{port}"
    # Loopback only: never an http_proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with opener.open(url + "/v2/", timeout=1.0) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "cacheproxy serve did not answer /v2/"
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
