"""min_free: its spellings, its default against the kubelet's thresholds, and the
DiskBudget that applies it, on an injected disk (free and total bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.blobs.disk import DiskBudget
from cacheproxy.config import Config, ConfigError, load_config
from cacheproxy.sizes import DiskSpace, largest_size

GiB = 1024**3
TiB = 1024**4
# The kubelet's default hard eviction thresholds (Linux): nodefs.available<10%,
# imagefs.available<15%; its image GC starts at 85% used (imageGCHighThresholdPercent).
KUBELET_TIGHTEST = 0.15


class Disk:
    """A file system of ``total`` bytes with ``free`` of them free, as a test sets it."""

    def __init__(self, total: int, free: int) -> None:
        self.total = total
        self.free = free

    def __call__(self) -> DiskSpace:
        return DiskSpace(self.free, self.total)


@pytest.mark.parametrize(
    ("raw", "terms"),
    [
        ("15%", ("15%",)),
        ("10GiB,15%", ("10GiB", "15%")),
        (" 10GiB , 20% ", ("10GiB", "20%")),
        ("1GiB", ("1GiB",)),
        ("0", ("0",)),
    ],
)
def test_min_free_from_the_environment(raw: str, terms: tuple[str, ...]) -> None:
    assert load_config(env={"CACHEPROXY_MIN_FREE": raw}).min_free == terms


def test_min_free_from_a_file_as_a_string_or_a_list(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('min_free = "15%"\n')
    assert load_config(file=file, env={}).min_free == ("15%",)
    file.write_text('min_free = ["10GiB", "15%"]\n')
    assert load_config(file=file, env={}).min_free == ("10GiB", "15%")


@pytest.mark.parametrize("raw", ["lots", "100%", "150%", "10GiB,half", "-5%"])
def test_bad_min_free(raw: str) -> None:
    with pytest.raises(ConfigError, match="min_free"):
        load_config(env={"CACHEPROXY_MIN_FREE": raw})


def test_the_default_is_the_larger_of_10_gib_and_20_percent() -> None:
    assert Config().min_free == ("10GiB", "20%")
    assert load_config(env={}).min_free == ("10GiB", "20%")
    assert largest_size(Config().min_free, 40 * GiB) == 10 * GiB
    assert largest_size(Config().min_free, 2 * TiB) == int(2 * TiB * 0.2)
    assert largest_size((), 2 * TiB) == 0


@given(st.integers(min_value=1 * GiB, max_value=1024 * TiB))
def test_the_default_keeps_every_disk_above_the_kubelets_thresholds(total: int) -> None:
    # A proxy that stops at min_free never takes the disk below what the kubelet
    # evicts pods at (nor to where its image GC starts), however big the disk.
    assert largest_size(Config().min_free, total) > KUBELET_TIGHTEST * total


def test_a_share_follows_the_file_system_and_the_budget_stops_at_it() -> None:
    disk = Disk(total=1 * TiB, free=300 * GiB)
    budget = DiskBudget(None, ("10GiB", "20%"), disk)
    floor = int(TiB * 0.2)
    assert budget.min_free(disk.total) == floor
    assert budget.admits_fill()
    assert budget.shortfall(disk()) == 0
    disk.free = floor
    assert budget.admits_fill() and budget.shortfall(disk()) == 0
    disk.free = floor - 1
    assert not budget.admits_fill()
    assert budget.shortfall(disk()) == 1
    # Grown online to 2 TiB: 20% of the new size.
    disk.total, disk.free = 2 * TiB, 300 * GiB
    assert budget.min_free(disk.total) == int(2 * TiB * 0.2)
    assert not budget.admits_fill()


def test_a_small_disk_keeps_its_floor_in_bytes() -> None:
    disk = Disk(total=40 * GiB, free=11 * GiB)
    budget = DiskBudget(None, ("10GiB", "20%"), disk)
    assert budget.admits_fill()
    disk.free = 10 * GiB - 1
    assert not budget.admits_fill()


def test_what_running_fills_will_write_counts_as_gone() -> None:
    disk = Disk(total=100 * GiB, free=25 * GiB)
    budget = DiskBudget(None, ("20%",), disk)
    assert budget.admits_fill()
    budget.outstanding = 5 * GiB
    assert budget.admits_fill()
    budget.outstanding = 5 * GiB + 1
    assert not budget.admits_fill()
    assert budget.shortfall(disk()) == 1


def test_imports_fit_under_min_free_and_the_limit() -> None:
    disk = Disk(total=100 * GiB, free=50 * GiB)
    assert DiskBudget(None, ("20%",), disk).room_for_import(0) == 30 * GiB
    assert DiskBudget(10 * GiB, ("20%",), disk).room_for_import(4 * GiB) == 6 * GiB
    disk.free = 10 * GiB
    assert DiskBudget(None, ("20%",), disk).room_for_import(0) == 0
