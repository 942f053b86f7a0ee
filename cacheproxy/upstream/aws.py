"""AWS clients for ECR tokens: one per region and credential source, on threads of
their own.

boto3 blocks and is slow to build (a session reads files, a client loads service
models), so clients are shared by every ECR upstream with the same region, profile
and role, and their calls run on a small executor owned here: a burst of token
requests, or an AWS endpoint that hangs, never takes the threads that serve the
index and the disk. The configured registries (and the shared tier) have one set;
the ``ecr`` preset, which any client can make build clients, has another
(``ecrpreset.py``), so configured registries never queue behind it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..config import UpstreamConfig
from ..errors import CredentialsUnavailable

T = TypeVar("T")
# Concurrent AWS calls; the rest wait their turn (tokens are cached for hours).
AWS_THREADS = 2
# Distinct (region, profile, role) clients kept; the oldest goes past this.
MAX_CLIENTS = 16

ClientFactory = Callable[[UpstreamConfig], Any]


class AwsBusy(CredentialsUnavailable):
    """Too many AWS calls are waiting for these threads: this one is not queued (the
    registry is not at fault, so nothing remembers it as failed)."""

    default_message = "too many ECR token requests are waiting"


class _Lane:
    """One owner's calls: at most so many on the executor, the rest wait here."""

    def __init__(self, calls: int) -> None:
        self.gate = asyncio.Semaphore(calls)
        #: Its calls in all, and those past the gate (on the executor).
        self.users = 0
        self.through = 0


class AwsClients:
    """Shared ECR clients, and the executor their calls run on.

    ``max_clients``: clients kept (the oldest goes past it); ``max_waiting``: calls
    running or queued at once, beyond which a call raises AwsBusy (None: as many as
    the callers, when they are few and fixed). ``per_owner``: calls one owner (a
    client of the proxy) may have on the executor at once, the rest waiting their
    turn in its own line, so that its slow calls never hold every thread.
    """

    def __init__(
        self,
        factory: ClientFactory,
        threads: int = AWS_THREADS,
        max_clients: int = MAX_CLIENTS,
        max_waiting: int | None = None,
        name: str = "aws",
        per_owner: int | None = None,
    ) -> None:
        self._factory = factory
        self._max_clients = max_clients
        self._max_waiting = max_waiting
        self._per_owner = per_owner
        # Owners with calls running or waiting; a lane goes with its last call. Its
        # calls are bounded by its callers' (one token call per registry at a time).
        self._lanes: dict[str, _Lane] = {}
        self._clients: dict[tuple[str | None, str | None, str | None], Any] = {}
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=name
        )
        #: Calls running or queued on the executor now.
        self.waiting = 0
        #: Clients built so far (the tests read it).
        self.built = 0

    def client(self, config: UpstreamConfig) -> Any:
        """The client for ``config``'s region and credentials (blocking: call in run())."""
        key = (config.region, config.aws_profile, config.aws_role_arn)
        with self._lock:
            found = self._clients.get(key)
        if found is not None:
            return found
        made = self._factory(config)
        with self._lock:
            self.built += 1
            found = self._clients.setdefault(key, made)
            while len(self._clients) > self._max_clients:
                del self._clients[next(iter(self._clients))]
        return found

    @property
    def queued(self) -> int:
        """Calls waiting in their owners' lines, not yet on the executor."""
        return sum(lane.users - lane.through for lane in self._lanes.values())

    async def run(self, fn: Callable[[], T], owner: str | None = None) -> T:
        """Run blocking AWS work on this executor (AwsBusy when too much waits, on
        the executor and in the owners' lines together); ``owner``: whose line the
        call waits in first (None: none)."""
        if self._max_waiting is not None and self.waiting + self.queued >= self._max_waiting:
            raise AwsBusy(headers={"Retry-After": "1"})
        if owner is None or self._per_owner is None:
            return await self._run(fn)
        lane = self._lanes.get(owner)
        if lane is None:
            lane = self._lanes[owner] = _Lane(self._per_owner)
        lane.users += 1
        try:
            async with lane.gate:
                lane.through += 1
                try:
                    return await self._run(fn)
                finally:
                    lane.through -= 1
        finally:
            lane.users -= 1
            if not lane.users:
                del self._lanes[owner]

    async def _run(self, fn: Callable[[], T]) -> T:
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        finally:
            self.waiting -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
