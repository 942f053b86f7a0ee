"""Sizes as people write them in settings: ``"50GB"``, ``"20GiB"``, ``"80%"``. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]i?b?|b|%)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}


def parse_size(text: str, disk_total: int) -> int:
    """``"50GB"``, ``"20GiB"``, ``"80%"`` (of a disk of ``disk_total`` bytes), or plain bytes.

    Raises ValueError for anything else.
    """
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"cannot read {text!r} as a size")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    if unit == "%":
        return int(disk_total * number / 100)
    base = unit[:1]
    factor = _UNITS[base] if "i" not in unit else 1024 ** "bkmgtp".index(base)
    return int(number * factor)


def largest_size(terms: Sequence[str], disk_total: int) -> int:
    """The largest of ``terms`` (each as :func:`parse_size` reads it) on a disk of
    ``disk_total`` bytes, 0 for none: ``("10GiB", "20%")`` is 10 GiB on a 40 GiB
    disk and 200 GiB on a 1 TiB one."""
    return max((parse_size(term, disk_total) for term in terms), default=0)


class DiskSpace(NamedTuple):
    """A file system's free and total bytes (as ``shutil.disk_usage`` has them)."""

    free: int
    total: int
