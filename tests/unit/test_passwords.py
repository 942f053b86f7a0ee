"""Password checks shared fairly between addresses, with a checker the test holds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import pytest

from cacheproxy.errors import TooManyRequests
from cacheproxy.http.clientauth import ClientAuth
from cacheproxy.http.passwords import PasswordChecks
from tests.support.images import basic_credentials
from tests.support.waiting import eventually

# Seconds a held check waits at most for the test to let it go (a forgotten release
# cannot hang the run).
HOLD = 20.0


class HeldChecker:
    """A checker whose checks wait until the test releases them; records the order
    in which checks reached a thread."""

    def __init__(self) -> None:
        self.started: list[bytes] = []
        self.go = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.started.append(password)
        self.go.wait(HOLD)
        return password == b"right"


@pytest.fixture
async def held() -> AsyncIterator[tuple[PasswordChecks, HeldChecker]]:
    checker = HeldChecker()
    checks = PasswordChecks(checker, workers=1, max_pending=8, per_client=3)
    yield checks, checker
    checker.go.set()
    await checks.close()


async def test_one_address_gets_a_share_of_the_checks_not_all(
    held: tuple[PasswordChecks, HeldChecker],
) -> None:
    checks, checker = held
    stranger = [
        asyncio.create_task(checks.check(b"guess-%d" % i, b"h", "10.0.0.66")) for i in range(3)
    ]
    await eventually(lambda: checks.pending == 3, what="the stranger's checks")
    with pytest.raises(TooManyRequests) as caught:
        await checks.check(b"guess-3", b"h", "10.0.0.66")
    assert caught.value.headers == {"Retry-After": "1"}
    assert checks.refused == {"full": 0, "per_client": 1, "fair_share": 0}
    # The user's check is admitted, and is next on the thread: behind the one
    # stranger's check running, not behind the two waiting.
    user = asyncio.create_task(checks.check(b"right", b"h", "10.0.0.7"))
    await eventually(lambda: checks.pending == 4, what="the user's check")
    checker.go.set()
    assert await user
    assert checker.started[:2] == [b"guess-0", b"right"]
    assert await asyncio.gather(*stranger) == [False] * 3
    assert checks.pending == 0 and checks.pending_for("10.0.0.66") == 0


async def test_all_checks_taken_evenly_is_answered_at_once(
    held: tuple[PasswordChecks, HeldChecker],
) -> None:
    """Nobody holds more than a newcomer would, plus one: nothing to take."""
    checks, checker = held
    many = [asyncio.create_task(checks.check(b"x", b"h", f"10.0.0.{i}")) for i in range(8)]
    await eventually(lambda: checks.pending == 8, what="eight checks")
    with pytest.raises(TooManyRequests):
        await checks.check(b"right", b"h", "10.0.0.99")
    assert checks.refused == {"full": 1, "per_client": 0, "fair_share": 0}
    checker.go.set()
    await asyncio.gather(*many)


async def test_a_new_address_takes_the_newest_waiting_place_of_the_address_holding_most(
    held: tuple[PasswordChecks, HeldChecker],
) -> None:
    """Every check taken by three strangers at their share (3, 3, 2): a new address
    takes the place of the newest waiting check of one holding 3 (answered 429), and
    waits its turn behind at most one check of each stranger; a stranger asking
    again finds nothing it may take."""
    checks, checker = held
    strangers = [f"10.0.0.{i // 3}" for i in range(8)]
    many = [
        asyncio.create_task(checks.check(b"guess-%d" % i, b"h", a)) for i, a in enumerate(strangers)
    ]
    await eventually(lambda: checks.pending == 8, what="eight checks")
    user = asyncio.create_task(checks.check(b"right", b"h", "10.0.0.99"))
    await eventually(lambda: checks.pending_for("10.0.0.99") == 1, what="the user's check admitted")
    assert checks.pending == 8 and checks.pending_for("10.0.0.0") == 2
    with pytest.raises(TooManyRequests) as caught:
        await many[2]  # 10.0.0.0's newest, waiting
    assert caught.value.headers == {"Retry-After": "1"}
    with pytest.raises(TooManyRequests):
        await checks.check(b"guess-9", b"h", "10.0.0.2")
    assert checks.refused == {"full": 1, "per_client": 0, "fair_share": 1}
    checker.go.set()
    assert await user
    # Behind the check that was running and one waiting check of each stranger.
    assert checker.started.index(b"right") == 1 + 3
    await asyncio.gather(*many, return_exceptions=True)
    assert checks.pending == 0


async def test_a_check_that_gives_up_waiting_frees_its_place(
    held: tuple[PasswordChecks, HeldChecker],
) -> None:
    checks, checker = held
    running = asyncio.create_task(checks.check(b"a", b"h", "10.0.0.1"))
    await eventually(lambda: checker.started == [b"a"], what="the first check on the thread")
    waiting = asyncio.create_task(checks.check(b"b", b"h", "10.0.0.2"))
    await eventually(lambda: checks.pending == 2, what="the second check waiting")
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert checks.pending == 1
    # The one on the thread keeps its place until its thread work ends.
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert checks.pending == 1
    checker.go.set()
    await eventually(lambda: checks.pending == 0, what="the thread's work to end")
    assert checker.started == [b"a"]


async def test_a_login_verified_before_never_waits_behind_strangers(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    checker = HeldChecker()
    checks = PasswordChecks(checker, workers=1, max_pending=4, per_client=4)
    auth = ClientAuth(htpasswd=htpasswd, passwords=checks)
    checker.go.set()
    assert await auth.identify(basic_credentials("alice", "right"), "10.0.0.7") == "alice"
    # Strangers take every check, and every thread is stuck.
    checker.go.clear()
    strangers = [
        asyncio.create_task(auth.identify(basic_credentials("alice", f"guess-{i}"), "10.0.0.66"))
        for i in range(4)
    ]
    await eventually(lambda: checks.pending == 4, what="the strangers' checks")
    async with asyncio.timeout(5):
        assert await auth.identify(basic_credentials("alice", "right"), "10.0.0.7") == "alice"
    checker.go.set()
    await asyncio.gather(*strangers, return_exceptions=True)
    await auth.close()
