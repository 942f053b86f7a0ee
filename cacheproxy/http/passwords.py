"""Password checks against bcrypt hashes, off the event loop and bounded.

bcrypt is slow on purpose (0.1-0.3 s a check at usual costs), so checks run on a
small executor of their own: a burst of bad logins must not take the default
thread pool that index reads, readiness probes and file work share. At most
``max_pending`` checks run or wait; past that a login is answered at once with
TOOMANYREQUESTS (429, ``Retry-After``): a client with good credentials is told to
retry, not that its password is wrong (which a 401 would say), and clients
already verified are remembered and never wait here.

A user name the htpasswd file does not hold is checked against a dummy hash of
the same cost, so a wrong password takes as long for an unknown user as for a
real one and the answer time does not tell which names exist.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..errors import TooManyRequests

#: (password, hash) -> whether they match. Blocking; runs on the executor.
Checker = Callable[[bytes, bytes], bool]

WORKERS = 2
MAX_PENDING = 16
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


class PasswordChecks:
    """Runs checks on an owned executor, at most ``max_pending`` at once."""

    def __init__(
        self,
        checker: Checker = bcrypt_check,
        workers: int = WORKERS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.checker = checker
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="cacheproxy-bcrypt")
        # A slot is freed when a check's thread work ends (or it is cancelled while
        # queued), not when its waiter gives up: a client that disconnects frees
        # nothing early, so abandoned checks cannot pile up behind the bound.
        self._lock = threading.Lock()
        self._pending = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        """Checks running or queued now."""
        return self._pending

    async def check(self, password: bytes, hashed: bytes) -> bool:
        """Whether ``password`` matches ``hashed``; TOOMANYREQUESTS when full."""
        with self._lock:
            full = self._pending >= self.max_pending
            if not full:
                self._pending += 1
        if full:
            self.refused += 1
            raise TooManyRequests(
                "too many logins are being checked; retry", headers={"Retry-After": RETRY_AFTER}
            )
        try:
            work: Future[bool] = self._executor.submit(self.checker, password, hashed)
        except RuntimeError:  # shut down
            self._release()
            raise
        work.add_done_callback(self._release)
        return await asyncio.wrap_future(work)

    def _release(self, _: object = None) -> None:
        with self._lock:
            self._pending -= 1

    async def close(self) -> None:
        """Drop queued checks and wait for the running ones (bounded: one bcrypt each)."""
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
