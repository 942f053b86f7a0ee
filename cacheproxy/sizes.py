"""Sizes as people write them in settings: ``"50GB"``, ``"20GiB"``, ``"80%"``. Pure."""

from __future__ import annotations

import re

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
