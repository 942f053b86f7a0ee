"""SingleFlight: one call per key in flight, its outcome shared by every caller."""

from __future__ import annotations

import asyncio

import pytest

from cacheproxy.singleflight import SingleFlight


class Call:
    """A call the test finishes by hand: counts its starts, ends as it is told."""

    def __init__(self) -> None:
        self.starts = 0
        self.started = asyncio.Event()
        self.cancelled = False
        self.result: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def __call__(self) -> str:
        self.starts += 1
        self.started.set()
        try:
            return await self.result
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_concurrent_calls_for_one_key_collapse_into_one() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    callers = [asyncio.create_task(flight.run_leading("k", call)) for _ in range(5)]
    await call.started.wait()
    call.result.set_result("value")
    results = await asyncio.gather(*callers)
    assert [value for value, _ in results] == ["value"] * 5
    assert [leader for _, leader in results].count(True) == 1
    assert call.starts == 1
    assert flight.calls == 1


async def test_different_keys_and_later_calls_run_on_their_own() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    a, b = Call(), Call()
    first = asyncio.create_task(flight.run("a", a))
    second = asyncio.create_task(flight.run("b", b))
    await a.started.wait()
    await b.started.wait()
    a.result.set_result("A")
    b.result.set_result("B")
    assert await asyncio.gather(first, second) == ["A", "B"]
    # The flight is over: the next call for "a" is a new one.
    again = Call()
    again.result.set_result("A2")
    assert await flight.run("a", again) == "A2"
    assert (a.starts, b.starts, again.starts, flight.calls) == (1, 1, 1, 3)


async def test_a_caller_going_away_does_not_cancel_the_call_for_the_others() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    leader = asyncio.create_task(flight.run("k", call))
    follower = asyncio.create_task(flight.run("k", call))
    await call.started.wait()
    # The one who started it leaves (a client disconnecting).
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    call.result.set_result("value")
    assert await follower == "value"
    assert not call.cancelled
    assert call.starts == 1


async def test_an_error_is_shared_by_every_caller_and_not_remembered() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    callers = [asyncio.create_task(flight.run("k", call)) for _ in range(3)]
    await call.started.wait()
    call.result.set_exception(ValueError("upstream said no"))
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert outcomes[0] is outcomes[1] is outcomes[2]
    # A failure is not cached: the next caller tries again.
    retry = Call()
    retry.result.set_result("value")
    assert await flight.run("k", retry) == "value"


async def test_close_cancels_the_calls_in_flight() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    waiter = asyncio.create_task(flight.run("k", call))
    await call.started.wait()
    await flight.close()
    assert call.cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert flight._inflight == {}
