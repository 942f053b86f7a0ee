"""Real registry clients run as subprocesses without blocking the test's event loop.

Tests run in-process servers (the proxy, :class:`~tests.support.forwarder.Forwarder`) on
the same loop as the test, so a client must be awaited, never run with a blocking
``subprocess.run``, or it would wait for a server that cannot answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Mapping
from typing import NamedTuple

from tests.support.process import stop_async_process

SKOPEO = "skopeo"


class ProcessResult(NamedTuple):
    """What a client run left behind; unpacks as ``(returncode, stdout, stderr)``."""

    returncode: int
    stdout: bytes
    stderr: str

    def check(self) -> ProcessResult:
        """Return self if the run succeeded, else raise with its stderr."""
        if self.returncode != 0:
            raise AssertionError(f"exit {self.returncode}: {self.stderr.strip()}")
        return self


async def run_process(
    *argv: str,
    # A default bound on every client run, so no test can hang on one. (A caller's own
    # asyncio.timeout works too: cancellation also kills the process.)
    timeout: float = 120.0,  # noqa: ASYNC109
    env: Mapping[str, str] | None = None,
) -> ProcessResult:
    """Run *argv* and collect its output; kill it (by PID) if it outlives *timeout*."""
    if shutil.which(argv[0]) is None:
        raise RuntimeError(f"{argv[0]!r} not found on PATH")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env is not None else None,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate()
    except BaseException:
        # Timed out or the test was cancelled: end the process we started, then reap it
        # so its pipes close (no ResourceWarning, no zombie).
        with contextlib.suppress(Exception):
            await stop_async_process(proc)
            await asyncio.wait_for(proc.communicate(), 10.0)
        raise
    assert proc.returncode is not None
    return ProcessResult(proc.returncode, stdout, stderr.decode(errors="replace"))


async def skopeo(
    *args: str,
    timeout: float = 120.0,  # noqa: ASYNC109
    env: Mapping[str, str] | None = None,
) -> ProcessResult:
    """Run ``skopeo ARGS`` (e.g. ``"inspect", "--raw", "--tls-verify=false", ref``)."""
    return await run_process(SKOPEO, *args, timeout=timeout, env=env)
