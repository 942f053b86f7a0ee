"""The processes the tests start: stopping them (by PID, only ours), crashing them on
purpose, and ``cacheproxy serve`` run the way a user runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.support.ports import free_port
from tests.support.waiting import eventually, eventually_sync

#: How long a stop waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT = 10.0


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a process we started (by its PID), SIGKILL it if it outlives
    ``timeout``, and reap it. Idempotent."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)


async def stop_async_process(
    proc: asyncio.subprocess.Process,
    timeout: float = STOP_TIMEOUT,  # noqa: ASYNC109
) -> None:
    """:func:`stop_process` for a process started with asyncio."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(proc.wait(), timeout)


async def crash(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a process we started (by its PID) and reap it: a crash, with no chance
    to close, flush or clean up."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()


def stop_pids(pids: Iterable[int], timeout: float = STOP_TIMEOUT) -> None:
    """Stop processes that are not our children but that ours started (a server's
    workers, left behind when their parent went first): SIGTERM, then SIGKILL."""
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if _alive(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@asynccontextmanager
async def serve_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    log: Path,
    port: int | None = None,
    tls: ssl.SSLContext | None = None,
    nofile: tuple[int, int] | None = None,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Run ``cacheproxy serve ARGS`` and wait (bounded) until it answers /v2/.

    ``tls``: the server listens with TLS, and this context trusts it (the URL is
    https). ``nofile``: the (soft, hard) RLIMIT_NOFILE the server starts with.
    """
    port = port or free_port()
    full_env = {**os.environ, "CACHEPROXY_LISTEN": f"127.0.0.1:{port}", **(env or {})}

    def limits() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

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
            preexec_fn=limits if nofile is not None else None,
        )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        connector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def answers() -> bool:
                try:
                    async with http.get(url + "/v2/") as resp:
                        if resp.status == 200:
                            return True
                except aiohttp.ClientConnectionError:
                    pass
                assert proc.returncode is None, log.read_text()
                return False

            await eventually(answers, timeout=20, interval=0.1, what=f"{url}/v2/ answering")
        yield proc, url
    finally:
        await stop_async_process(proc)


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

    def answers() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            with opener.open(url + "/v2/", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    try:
        eventually_sync(answers, timeout=20, interval=0.1, what=f"{url}/v2/ answering")
        yield proc, url
    finally:
        stop_process(proc)
