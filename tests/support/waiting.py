"""Waiting for something to become true, always within a bound.

Tests of live servers often wait for a state the server reaches on its own time (a
fill starts, a metric moves, a file appears). :func:`eventually` and
:func:`eventually_sync` are the one way they do it: the check is called until it
returns a truthy value, which is returned; past the bound the test fails with an
AssertionError that names what was awaited and the last value seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

TIMEOUT = 10.0
INTERVAL = 0.02
# A failure message quotes the last value seen, cut to this many characters (a
# metrics page or a listing can be long).
LAST_SEEN_CHARS = 300


def _failure(what: str, timeout: float, last: object) -> AssertionError:
    seen = repr(last)
    if len(seen) > LAST_SEEN_CHARS:
        seen = seen[:LAST_SEEN_CHARS] + "..."
    return AssertionError(f"not within {timeout:g} s: {what} (last seen: {seen})")


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str = ...,
) -> T: ...


async def eventually(
    check: Callable[[], object],
    *,
    timeout: float = TIMEOUT,  # noqa: ASYNC109 (the bound is the point of it)
    interval: float = INTERVAL,
    what: str = "the condition",
) -> object:
    """Call ``check`` (sync, or async: awaited) until it returns a truthy value, and
    return that value; first at once, then every ``interval`` seconds.

    The whole wait, a check that itself hangs included, is bounded by ``timeout``
    seconds: past it, an AssertionError names ``what`` and the last value seen. An
    exception raised by ``check`` ends the wait at once (it is the test's failure).
    """
    last: object = None
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            while True:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                last = value
                await asyncio.sleep(interval)
    except TimeoutError:
        if not scope.expired():
            raise  # the check's own TimeoutError, not the bound's
        raise _failure(what, timeout, last) from None


def eventually_sync(
    check: Callable[[], T],
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    what: str = "the condition",
) -> T:
    """:func:`eventually` for code without an event loop (a thread, a sync fixture).

    The bound is checked between calls, so ``check`` must itself be bounded (a
    socket timeout, say): it is not interrupted.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, value)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
