"""AWS clients for ECR tokens: one per region and credential source, on threads of
their own.

boto3 blocks and is slow to build (a session reads files, a client loads service
models), so clients are shared by every ECR upstream with the same region, profile
and role, and their calls run on a small executor owned here: a burst of token
requests, or an AWS endpoint that hangs, never takes the threads that serve the
index and the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..config import UpstreamConfig

T = TypeVar("T")
# Concurrent AWS calls; the rest wait their turn (tokens are cached for hours).
AWS_THREADS = 2
# Distinct (region, profile, role) clients kept; the oldest goes past this.
MAX_CLIENTS = 16

ClientFactory = Callable[[UpstreamConfig], Any]


class AwsClients:
    """Shared ECR clients, and the executor their calls run on."""

    def __init__(self, factory: ClientFactory, threads: int = AWS_THREADS) -> None:
        self._factory = factory
        self._clients: dict[tuple[str | None, str | None, str | None], Any] = {}
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="aws"
        )

    def client(self, config: UpstreamConfig) -> Any:
        """The client for ``config``'s region and credentials (blocking: call in run())."""
        key = (config.region, config.aws_profile, config.aws_role_arn)
        with self._lock:
            found = self._clients.get(key)
        if found is not None:
            return found
        made = self._factory(config)
        with self._lock:
            found = self._clients.setdefault(key, made)
            while len(self._clients) > MAX_CLIENTS:
                del self._clients[next(iter(self._clients))]
        return found

    async def run(self, fn: Callable[[], T]) -> T:
        """Run blocking AWS work on this executor."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
