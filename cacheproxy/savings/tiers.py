"""Monthly tiered pricing, applied to a month's cumulative volume.

Providers price data transfer per calendar month: a free allowance first, then
bands ("first 10 TB, next 40 TB, next 100 TB, over 150 TB") whose rate applies to
the part of the month's running total that falls inside each band. A price is
therefore never a property of one request: the same gigabyte costs $0.09 on the
first day of a month and $0.05 on its last day when the month is big enough.

Everything here is pure and exact (``Decimal``): a month that crosses a band
boundary is priced in parts, and what a cache saved is the difference between the
cost of the volume that would have crossed the wire without it and the volume that
did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)

# AWS bills data transfer per "GB" of 2**30 bytes: its S3 FAQ prices 10 TB as
# 10,995,116,277,760 bytes (10 * 2**40) and a GB-month as 2**30 byte-months; the
# Price List API gives transfer tiers as 10240 / 51200 / 153600 GB. Google Cloud
# says GiB outright; Azure's bandwidth page gives no definition and is treated the
# same way. A schedule can carry its own unit (see prices.toml) if one ever differs.
GIB = 2**30


@dataclass(frozen=True, slots=True)
class Band:
    """``usd_per_gb`` for the next ``width_gb`` of a month; ``None`` is unbounded."""

    usd_per_gb: Decimal
    width_gb: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Part:
    """The share of a volume that fell into one band, and what it cost."""

    start_gb: Decimal
    gb: Decimal
    usd_per_gb: Decimal

    @property
    def usd(self) -> Decimal:
        return self.gb * self.usd_per_gb


@dataclass(frozen=True, slots=True)
class Schedule:
    """A monthly price: ``free_gb`` at no charge, then ``bands`` in order.

    The last band is unbounded ("greater than 150 TB"); every other one has a width.
    """

    bands: tuple[Band, ...]
    free_gb: Decimal = ZERO
    bytes_per_gb: int = GIB

    def __post_init__(self) -> None:
        if not self.bands:
            raise ValueError("a schedule needs at least one band")
        if self.free_gb < 0 or any(b.usd_per_gb < 0 for b in self.bands):
            raise ValueError("prices and allowances must not be negative")
        if any(b.width_gb is not None and b.width_gb <= 0 for b in self.bands):
            raise ValueError("a bounded band needs a positive width")
        if any(b.width_gb is None for b in self.bands[:-1]) or self.bands[-1].width_gb:
            raise ValueError("every band but the last needs a width; the last has none")

    def segments(self) -> list[tuple[Decimal, Decimal | None, Decimal]]:
        """``(start_gb, end_gb or None, usd_per_gb)`` over the whole month, free first."""
        out: list[tuple[Decimal, Decimal | None, Decimal]] = []
        pos = ZERO
        if self.free_gb > 0:
            out.append((ZERO, self.free_gb, ZERO))
            pos = self.free_gb
        for band in self.bands:
            end = None if band.width_gb is None else pos + band.width_gb
            out.append((pos, end, band.usd_per_gb))
            if end is not None:
                pos = end
        return out


def flat(usd_per_gb: Decimal) -> Schedule:
    """One rate for every gigabyte (NAT gateway or endpoint processing)."""
    return Schedule((Band(usd_per_gb),))


def parts(schedule: Schedule, start_gb: Decimal, gb: Decimal) -> list[Part]:
    """How ``gb`` more, on top of ``start_gb`` already used this month, is priced.

    Each returned part lies inside one band (or the free allowance).
    """
    if start_gb < 0 or gb < 0:
        raise ValueError("volumes must not be negative")
    out: list[Part] = []
    lo, hi = start_gb, start_gb + gb
    for seg_start, seg_end, rate in schedule.segments():
        if seg_end is not None and seg_end <= lo:
            continue
        take_from = max(lo, seg_start)
        take_to = hi if seg_end is None else min(hi, seg_end)
        if take_to > take_from:
            out.append(Part(take_from, take_to - take_from, rate))
        if seg_end is None or seg_end >= hi:
            break
    return out


def cost_gb(schedule: Schedule, gb: Decimal) -> Decimal:
    """What a month with ``gb`` of cumulative volume costs in total."""
    return sum((p.usd for p in parts(schedule, ZERO, gb)), ZERO)


def cost(schedule: Schedule, nbytes: int) -> Decimal:
    """What a month with ``nbytes`` of cumulative volume costs in total."""
    return cost_gb(schedule, to_gb(schedule, nbytes))


def to_gb(schedule: Schedule, nbytes: int) -> Decimal:
    """``nbytes`` in the schedule's billing unit."""
    return Decimal(nbytes) / Decimal(schedule.bytes_per_gb)


def saved(schedules: Sequence[Schedule], actual_bytes: int, avoided_bytes: int) -> Decimal:
    """Dollars a month saved: the cost of ``actual + avoided`` minus that of ``actual``.

    ``actual_bytes`` is what really crossed the wire this month (the upstream
    transfers the cache made); ``avoided_bytes`` is what clients got from the cache
    instead. The avoided bytes are the ones on top of the month's total, so they are
    priced at the month's marginal rates, which is what not sending them saved.
    Several schedules (a registry's egress plus a NAT gateway's processing) add up.
    """
    total = ZERO
    for schedule in schedules:
        total += cost(schedule, actual_bytes + avoided_bytes) - cost(schedule, actual_bytes)
    return total
