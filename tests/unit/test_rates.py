"""The bandwidth limits' buckets (cacheproxy/rates.py), on a clock the test moves: the
sleeps asked for are exactly what the rate allows, transfers of one kind are served
in the order they asked, a cancelled ask gives its bytes back; and the settings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from cacheproxy import rates
from cacheproxy.config import ConfigError, load_config
from cacheproxy.rates import BURST, Rate, parse_rate, rates_of


class Clock:
    """A clock asyncio.sleep moves: a sleep of ``d`` returns at once, ``d`` later."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    made = Clock()
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        made.sleeps.append(delay)
        made.now += delay
        await real_sleep(0)

    monkeypatch.setattr(rates.asyncio, "sleep", sleep)
    yield made


async def test_a_transfer_goes_at_the_rate_after_a_tenth_of_a_second_of_burst(
    clock: Clock,
) -> None:
    rate = Rate("upstream", 1_000_000.0, clock=clock)
    step = rate.quantum()
    assert step == 50_000  # a twentieth of a second of the rate
    for _ in range(40):  # 2 MB: 2 s at 1 MB/s
        await rate.take(step)
    # The first tenth of a second's bytes went at once; the rest at the rate.
    assert clock.now - 100.0 == pytest.approx(2.0 - BURST)
    assert rate.bytes == 2_000_000
    assert rate.waited == pytest.approx(sum(clock.sleeps))


async def test_transfers_of_a_kind_share_the_rate_in_the_order_they_asked() -> None:
    # The real clock, at a rate that makes the whole run a tenth of a second: the
    # wake-ups come in the order of their deadlines, whatever the machine's load.
    rate = Rate("peer_upload", 10_000_000.0)
    order: list[str] = []

    async def transfer(name: str, count: int) -> None:
        for _ in range(count):
            await rate.take(rate.quantum())
            order.append(name)

    await asyncio.gather(transfer("a", 10), transfer("b", 10))
    # Neither takes the whole rate while the other waits: past the burst (the first
    # asks, which need not wait) they alternate until one is done.
    last_a = len(order) - 1 - order[::-1].index("a")
    both = order[3 : last_a + 1]
    assert len(both) >= 12, " ".join(order)
    assert all(both[i] != both[i + 1] for i in range(len(both) - 1)), " ".join(order)
    assert rate.bytes == 20 * rate.quantum()


async def test_an_ask_cancelled_while_it_waits_gives_its_bytes_back() -> None:
    rate = Rate("prefetch", 1000.0)  # the real clock: one ask of 10 s must wait
    await rate.take(100)  # within the burst
    waiting = asyncio.create_task(rate.take(10_000))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert rate.bytes == 100
    # The next ask does not wait behind the cancelled one's 10 s.
    await asyncio.wait_for(rate.take(50), timeout=2.0)


def test_rates_are_sizes_a_second_and_zero_is_none() -> None:
    assert parse_rate("50MiB") == 50 * 1024 * 1024
    assert parse_rate("25MB") == 25_000_000
    assert parse_rate("1000") == 1000
    with pytest.raises(ValueError):
        parse_rate("10%")
    with pytest.raises(ValueError):
        parse_rate("fast")
    made = rates_of("0", "10MB", "0")
    assert made.upstream is None and made.prefetch is None
    assert made.peer_upload is not None and made.peer_upload.per_second == 10_000_000
    kinds = [r.kind for r in rates_of("1", "2", "3").all()]
    assert kinds == ["upstream", "peer_upload", "prefetch"]


@pytest.mark.parametrize("key", ["upstream_rate", "peer_upload_rate", "prefetch_rate"])
def test_a_rate_that_is_not_one_is_a_configuration_error(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(env={}, flags={key: "20%"})
