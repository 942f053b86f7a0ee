"""The tests' one way of waiting: eventually() and eventually_sync()."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support.waiting import eventually, eventually_sync


async def test_the_first_truthy_value_is_returned() -> None:
    counter = itertools.count()
    assert await eventually(lambda: next(counter) >= 3 and "ready", interval=0) == "ready"
    assert next(counter) == 4  # called until it held, and no more


async def test_an_async_check_is_awaited() -> None:
    calls: list[int] = []

    async def check() -> list[int] | None:
        calls.append(1)
        return calls if len(calls) == 2 else None

    assert await eventually(check, interval=0) == [1, 1]


async def test_the_bound_fails_naming_what_and_the_last_value() -> None:
    counter = itertools.count()
    with pytest.raises(AssertionError) as failed:
        await eventually(lambda: 0 * next(counter), timeout=0.1, what="the fill started")
    message = str(failed.value)
    assert message == "not within 0.1 s: the fill started (last seen: 0)"
    assert next(counter) > 1  # it kept asking until the bound


async def test_a_hanging_check_is_cut_at_the_bound() -> None:
    async def hangs() -> bool:
        await asyncio.sleep(3600)
        return True

    with pytest.raises(AssertionError, match=r"not within 0.1 s: an answer \(last seen: None\)"):
        await eventually(hangs, timeout=0.1, what="an answer")


class LongFalsy:
    """A falsy value with a long repr, as a metrics page that lacks a line."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "x" * 10_000


async def test_a_long_last_value_is_cut_short() -> None:
    with pytest.raises(AssertionError) as failed:
        await eventually(LongFalsy, timeout=0.05, what="the line")
    assert str(failed.value).endswith("x" * 300 + "...)")
    assert len(str(failed.value)) < 400


async def test_the_checks_own_errors_end_the_wait() -> None:
    def broken() -> bool:
        raise ValueError("the server crashed")

    with pytest.raises(ValueError, match="crashed"):
        await eventually(broken, timeout=10)

    async def times_out() -> bool:
        raise TimeoutError("its own")

    with pytest.raises(TimeoutError, match="its own"):
        await eventually(times_out, timeout=10)


def test_the_sync_twin_returns_and_fails_the_same_way() -> None:
    counter = itertools.count()
    assert eventually_sync(lambda: next(counter) == 2, interval=0) is True
    with pytest.raises(AssertionError, match=r"not within 0.05 s: a file \(last seen: \[\]\)"):
        eventually_sync(list, timeout=0.05, what="a file")
