"""Password checks against bcrypt hashes, off the event loop, bounded and shared
fairly between clients.

bcrypt is slow on purpose (0.1-0.3 s a check at usual costs), so checks run on a
small executor of their own: a burst of bad logins must not take the default
thread pool that index reads, readiness probes and file work share. At most
``max_pending`` checks run or wait, and one client (its address: nothing else is
known of it before its password is checked) at most ``per_client`` of them; past
its share, a login is answered at once with TOOMANYREQUESTS (429,
``Retry-After``): a client with good credentials is told to retry, not that its
password is wrong (which a 401 would say). With every check taken, a login from a
client holding fewer takes the place of the newest waiting check of the client
holding the most, if that one holds more than the newcomer would, plus one (that
check is answered 429 instead), as the fill queue does: a few strangers each at
their share cannot keep a new client out. Checks waiting for a thread are served
by client in turn, not first come, so a stranger's many wrong guesses make a real
user's login wait behind one of them, not all. Clients already verified never wait
here (``clientauth``).

A user name the htpasswd file does not hold is checked against a dummy hash of
the same cost, so a wrong password takes as long for an unknown user as for a
real one and the answer time does not tell which names exist.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NoReturn

from ..errors import TooManyRequests
from ..fairness import FairQueue

#: (password, hash) -> whether they match. Blocking; runs on the executor.
Checker = Callable[[bytes, bytes], bool]

WORKERS = 2
MAX_PENDING = 16
#: Checks one address may have running or waiting: a quarter of them.
PER_CLIENT = 4
RETRY_AFTER = "1"
DEFAULT_COST = 12
# The alphabet of bcrypt's base64 (the hash part of a dummy is random text in it).
_BCRYPT64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def bcrypt_check(password: bytes, hashed: bytes) -> bool:
    """bcrypt's own comparison; a malformed hash matches nothing."""
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:
        return False


def cost_of(hashed: bytes) -> int | None:
    """The cost factor of ``$2b$12$...``, or None if it is not readable."""
    parts = hashed.split(b"$")
    if len(parts) < 4 or not parts[2].isdigit():
        return None
    return int(parts[2])


def dummy_hash(cost: int) -> bytes:
    """A well-formed bcrypt hash of ``cost`` that no password matches (cheap to make:
    a fresh salt and random hash text, no hashing)."""
    import bcrypt

    filler = "".join(secrets.choice(_BCRYPT64) for _ in range(31))
    return bcrypt.gensalt(rounds=cost) + filler.encode()


def dummy_for(hashes: list[bytes]) -> bytes:
    """The dummy for a file: the highest cost among its hashes (a file usually has
    one), so no unknown user is answered faster than a real one."""
    costs = [c for c in map(cost_of, hashes) if c is not None and 4 <= c <= 31]
    return dummy_hash(max(costs, default=DEFAULT_COST))


class _Displaced(TooManyRequests):
    """A waiting check whose place went to another client's (already released)."""


class PasswordChecks:
    """Runs checks on an owned executor: ``workers`` at once, ``max_pending``
    running or waiting, ``per_client`` of them for one client, served in turn."""

    def __init__(
        self,
        checker: Checker = bcrypt_check,
        workers: int = WORKERS,
        max_pending: int = MAX_PENDING,
        per_client: int = PER_CLIENT,
    ) -> None:
        self.checker = checker
        self.max_pending = max_pending
        self.per_client = per_client
        self._workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="cacheproxy-bcrypt")
        # A check holds its place from admission until its thread work ends (or it
        # gives up while it waits for a thread): a client that disconnects frees
        # nothing early, so abandoned checks cannot pile up behind the bound.
        self._pending = 0
        self._by_client: dict[str, int] = {}
        # Threads given to a check (the executor never queues: this queue orders),
        # and per client: the next thread goes to the client with fewest on one.
        self._busy = 0
        self._on_threads: dict[str, int] = {}
        self._turns: FairQueue[asyncio.Future[None]] = FairQueue(dead=lambda f: f.done())
        #: Logins answered TOOMANYREQUESTS: every check was taken, the client's share
        #: was, or (``fair_share``) a waiting check gave its place to another client's.
        self.refused = {"full": 0, "per_client": 0, "fair_share": 0}

    @property
    def pending(self) -> int:
        """Checks running or waiting now."""
        return self._pending

    def pending_for(self, client: str) -> int:
        """Checks ``client`` has running or waiting."""
        return self._by_client.get(client, 0)

    async def check(self, password: bytes, hashed: bytes, client: str = "") -> bool:
        """Whether ``password`` matches ``hashed``; TOOMANYREQUESTS when all checks,
        or ``client``'s share of them, are taken."""
        if self._pending >= self.max_pending and not self._displace(client):
            self._refuse("full", "too many logins are being checked; retry")
        if self.pending_for(client) >= self.per_client:
            self._refuse("per_client", "too many logins from this address at once; retry")
        self._pending += 1
        self._count(self._by_client, client, 1)
        try:
            await self._turn(client)
        except _Displaced:
            raise  # its place was released as it was given away
        except BaseException:
            self._release(client)
            raise
        try:
            work: Future[bool] = self._executor.submit(self.checker, password, hashed)
        except RuntimeError:  # shut down
            self._finished(client)
            raise
        done = asyncio.wrap_future(work)
        done.add_done_callback(lambda finished: self._finished(client, finished))
        # A caller that gives up does not stop the thread: its place and thread
        # are given back when the check ends.
        return await asyncio.shield(done)

    async def _turn(self, client: str) -> None:
        """Wait until a thread is this check's: at once if one is free and nobody
        waits, else in turn by client."""
        if self._busy < self._workers and not len(self._turns):
            self._busy += 1
            self._count(self._on_threads, client, 1)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.push(client, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Given a thread as it gave up: pass it on.
                self._count(self._on_threads, client, -1)
                self._hand_over()
            else:
                self._turns.remove(client, waiter)
            raise

    def _displace(self, client: str) -> bool:
        """Every check taken: give ``client`` the place of the newest waiting check
        of the client holding the most, if that one holds more than ``client`` would,
        plus one (a check on a thread runs to its end: only waiting ones give way)."""
        mine = self.pending_for(client) + 1
        rival, most = None, mine
        for other in self._turns.clients():
            if other != client and self.pending_for(other) > most:
                rival, most = other, self.pending_for(other)
        waiter = self._turns.take_newest(rival) if rival is not None else None
        if rival is None or waiter is None:
            return False
        self._release(rival)
        self.refused["fair_share"] += 1
        message = "too many logins are being checked, many from this address; retry"
        waiter.set_exception(_Displaced(message, headers={"Retry-After": RETRY_AFTER}))
        return True

    def _finished(self, client: str, work: asyncio.Future[bool] | None = None) -> None:
        if work is not None and not work.cancelled():
            work.exception()  # retrieved: a caller that gave up cannot
        self._release(client)
        # Chosen while this client still counts its thread: a client whose check
        # just ended has had its turn, and goes after one that had none.
        self._hand_over()
        self._count(self._on_threads, client, -1)

    def _hand_over(self) -> None:
        """A thread is free: to the next check in turn, or idle."""
        client = self._turns.next(lambda c: self._on_threads.get(c, 0))
        if client is None:
            self._busy -= 1
        else:
            self._count(self._on_threads, client, 1)
            self._turns.take(client).set_result(None)

    def _release(self, client: str) -> None:
        self._pending -= 1
        self._count(self._by_client, client, -1)

    @staticmethod
    def _count(counts: dict[str, int], client: str, change: int) -> None:
        left = counts.get(client, 0) + change
        if left:
            counts[client] = left
        else:
            counts.pop(client, None)

    def _refuse(self, reason: str, message: str) -> NoReturn:
        self.refused[reason] += 1
        raise TooManyRequests(message, headers={"Retry-After": RETRY_AFTER})

    async def close(self) -> None:
        """Wait for the running checks (bounded: one bcrypt each)."""
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
