"""Byte ranges (RFC 9110 section 14): what a client asks for, what a server answered. Pure.

Only one range is served. A Range header the server does not understand, or one
asking for several ranges, is ignored and the whole blob is sent (section 14.2:
"a server MAY ignore the Range header field"), which every client handles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RangeNotSatisfiable
from .numbers import MAX_DIGITS, parse_digits

# Section 14.1.1: positions are 1*DIGIT, and DIGIT is ASCII (RFC 5234): [0-9], never
# \d (any script's digits in a str pattern), and re.ASCII so that IGNORECASE folds
# "BYTES" but not U+017F (long s) into "bytes".
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE | re.ASCII)
_CONTENT_RANGE_RE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)", re.IGNORECASE | re.ASCII)
# OWS (RFC 9110 section 5.6.3) is spaces and tabs, not every Unicode space str.strip() takes.
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A suffix (``-N``), open (``N-``) or closed (``N-M``) range, not yet resolved."""

    first: int | None
    last: int | None

    def resolve(self, size: int) -> tuple[int, int]:
        """Inclusive (start, end) within a representation of ``size`` bytes.

        Raises RangeNotSatisfiable (416) when no byte of the range exists.
        """
        if self.first is None:
            assert self.last is not None
            if self.last == 0 or size == 0:
                raise _unsatisfiable(size)
            return max(0, size - self.last), size - 1
        if self.first >= size:
            raise _unsatisfiable(size)
        end = size - 1 if self.last is None else min(self.last, size - 1)
        return self.first, end


def parse_range(header: str | None) -> ByteRange | None:
    """The single range asked for, or None to serve the whole representation."""
    if not header:
        return None
    m = _RANGE_RE.fullmatch(header.strip(_OWS))
    if m is None:
        return None
    first_s, last_s = m.groups()
    if len(first_s) > MAX_DIGITS or len(last_s) > MAX_DIGITS:
        return None
    if not first_s and not last_s:
        return None
    first = int(first_s) if first_s else None
    last = int(last_s) if last_s else None
    if first is not None and last is not None and last < first:
        # Section 14.1.1: an invalid range-spec makes the whole header invalid,
        # and an invalid Range header is ignored.
        return None
    return ByteRange(first, last)


def range_header(start: int, end: int | None) -> str | None:
    """The ``Range`` value asking for bytes ``start..end`` (inclusive; None: to the
    end), or None when that is the whole representation."""
    if end is None:
        return f"bytes={start}-" if start else None
    return f"bytes={start}-{end}"


def content_range(start: int, end: int, size: int) -> str:
    return f"bytes {start}-{end}/{size}"


def parse_content_range(value: str) -> tuple[int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 100); unknown parts are None (section 14.4)."""
    unit, _, rest = value.partition(" ")
    if unit.strip().lower() != "bytes":
        return None, None
    span, _, total = rest.partition("/")
    start = parse_digits(span.partition("-")[0].strip(_OWS))
    if start is None:
        return None, None
    return start, parse_digits(total.strip(_OWS))


def parse_content_span(value: str) -> tuple[int, int, int | None] | None:
    """``bytes 10-99/100`` -> (10, 99, 100); ``bytes 10-99/*`` -> (10, 99, None).

    None for anything that is not one well-formed satisfied range (section 14.4:
    first <= last, and last < complete-length when that is known).
    """
    m = _CONTENT_RANGE_RE.fullmatch(value.strip(_OWS))
    if m is None:
        return None
    first_s, last_s, total_s = m.groups()
    if max(len(first_s), len(last_s), len(total_s)) > MAX_DIGITS:
        return None
    first, last = int(first_s), int(last_s)
    total = None if total_s == "*" else int(total_s)
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        "requested range not satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )
