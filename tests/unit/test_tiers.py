"""Monthly tiers on cumulative volume, worked by hand at and across every boundary.

The schedule is AWS's transfer-out-to-internet table for us-west-2 (the seed
article's): first 10 TB $0.09/GB, next 40 TB $0.085, next 100 TB $0.07, over 150 TB
$0.05, with AWS's GB of 2**30 bytes and TB of 1024 GB.
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from cacheproxy.savings.tiers import GIB, Band, Part, Schedule, cost, cost_gb, flat, parts, saved

AWS = Schedule(
    (
        Band(D("0.09"), D(10240)),
        Band(D("0.085"), D(40960)),
        Band(D("0.07"), D(102400)),
        Band(D("0.05")),
    )
)
# ECR Public with an AWS account: 5 TB a month free, then $0.09/GB.
ECR_PUBLIC = Schedule((Band(D("0.09")),), free_gb=D(5120))
# Azure-style: 100 GB free, then bands counted after the allowance.
AZURE = Schedule((Band(D("0.087"), D(10240)), Band(D("0.083"))), free_gb=D(100))


@pytest.mark.parametrize(
    ("gb", "usd"),
    [
        (0, "0"),
        (1, "0.09"),
        # At the first boundary: 10240 GB * 0.09.
        (10240, "921.60"),
        # One GB past it is priced at the second band.
        (10241, "921.685"),
        # Second boundary: 921.60 + 40960 * 0.085 = 921.60 + 3481.60.
        (51200, "4403.20"),
        (51201, "4403.27"),
        # Third: 4403.20 + 102400 * 0.07 = 4403.20 + 7168.
        (153600, "11571.20"),
        (153601, "11571.25"),
        # 200 TB: 11571.20 + 51200 * 0.05.
        (204800, "14131.20"),
    ],
)
def test_month_cost_at_and_across_each_boundary(gb: int, usd: str) -> None:
    assert cost_gb(AWS, D(gb)) == D(usd)


def test_a_month_crossing_a_boundary_is_priced_in_parts() -> None:
    # 10000 GB already this month, 500 more: 240 at $0.09, 260 at $0.085.
    got = parts(AWS, D(10000), D(500))
    assert got == [Part(D(10000), D(240), D("0.09")), Part(D(10240), D(260), D("0.085"))]
    assert sum(p.usd for p in got) == D("21.60") + D("22.10")


def test_one_transfer_spanning_every_band() -> None:
    got = parts(AWS, D(0), D(200000))
    assert [(p.gb, p.usd_per_gb) for p in got] == [
        (D(10240), D("0.09")),
        (D(40960), D("0.085")),
        (D(102400), D("0.07")),
        (D(46400), D("0.05")),
    ]


def test_tiers_apply_to_the_months_volume_not_to_each_request() -> None:
    # 30 transfers of 1 TB each: priced one by one from zero they would all cost
    # $0.09/GB; on the month's running total the last twenty are at $0.085.
    total = D(0)
    running = D(0)
    for _ in range(30):
        total += sum(p.usd for p in parts(AWS, running, D(1024)))
        running += 1024
    assert total == cost_gb(AWS, D(30720)) == D(10240) * D("0.09") + D(20480) * D("0.085")
    assert total < 30 * cost_gb(AWS, D(1024))


def test_saved_is_the_marginal_cost_of_the_avoided_volume() -> None:
    # 8 TiB fetched, 4 TiB served from cache: without the cache the month would be
    # 12 TiB. The avoided 4 TiB are the top of the month: 2048 GB at 0.09 (up to
    # 10240) and 2048 GB at 0.085 = 184.32 + 174.08.
    assert saved([AWS], 8192 * GIB, 4096 * GIB) == D("358.40")
    # The same avoided volume on an empty month is all at the first band.
    assert saved([AWS], 0, 4096 * GIB) == D("368.64")
    # Past 150 TB every avoided GB saves $0.05.
    assert saved([AWS], 160000 * GIB, 1000 * GIB) == D("50")


def test_free_allowance_comes_off_first() -> None:
    assert cost_gb(ECR_PUBLIC, D(5120)) == 0
    assert cost_gb(ECR_PUBLIC, D(5121)) == D("0.09")
    # 5000 GB fetched (free), 200 GB avoided: 120 GB were still free, 80 GB were not.
    assert saved([ECR_PUBLIC], 5000 * GIB, 200 * GIB) == D("7.20")
    # Bands are counted after the allowance: Azure's "next 10 TB" ends at 10340 GB.
    assert cost_gb(AZURE, D(100)) == 0
    assert cost_gb(AZURE, D(10340)) == D(10240) * D("0.087") == D("890.88")
    assert cost_gb(AZURE, D(10341)) == D("890.963")


def test_several_schedules_add_up() -> None:
    nat = flat(D("0.045"))
    assert saved([AWS, nat], 0, 100 * GIB) == D(100) * (D("0.09") + D("0.045"))


def test_bytes_are_billed_in_gib() -> None:
    assert cost(AWS, GIB) == D("0.09")
    # A decimal gigabyte is 0.93 of AWS's GB.
    assert cost(AWS, 10**9) == D("0.09") * D(10**9) / D(GIB)


@pytest.mark.parametrize(
    "bands",
    [
        (),
        (Band(D("0.09"), D(10)),),  # the last band must be unbounded
        (Band(D("0.09")), Band(D("0.05"))),  # only the last may be
        (Band(D("-1")),),
        (Band(D("0.09"), D(0)), Band(D("0.05"))),
    ],
)
def test_malformed_schedules_are_refused(bands: tuple[Band, ...]) -> None:
    with pytest.raises(ValueError):
        Schedule(bands)


def test_negative_volumes_are_refused() -> None:
    with pytest.raises(ValueError):
        parts(AWS, D(-1), D(1))
