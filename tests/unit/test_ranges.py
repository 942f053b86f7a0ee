from __future__ import annotations

import pytest

from cacheproxy.errors import RangeNotSatisfiable
from cacheproxy.ranges import ByteRange, parse_content_span, parse_range, range_header


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=0-9", 10, (0, 9)),
        ("bytes=0-99", 10, (0, 9)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("BYTES=2-4", 10, (2, 4)),
        ("bytes=9-9", 10, (9, 9)),
    ],
)
def test_resolve(header: str, size: int, expected: tuple[int, int]) -> None:
    wanted = parse_range(header)
    assert wanted is not None
    assert wanted.resolve(size) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes=",
        "bytes=-",
        "bytes=5-2",
        "bytes=0-1,3-4",
        "items=0-1",
        "bytes=a-b",
        "bytes=" + "9" * 30 + "-",
    ],
)
def test_ignored(header: str | None) -> None:
    # RFC 9110 section 14.2: an invalid or multi-range header is ignored (200, whole body).
    assert parse_range(header) is None


@pytest.mark.parametrize(
    ("rng", "size"),
    [
        (ByteRange(10, None), 10),
        (ByteRange(None, 0), 10),
        (ByteRange(0, None), 0),
        (ByteRange(11, 20), 10),
    ],
)
def test_unsatisfiable(rng: ByteRange, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        rng.resolve(size)
    assert info.value.status == 416
    assert info.value.headers["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, None, None), (5, None, "bytes=5-"), (0, 0, "bytes=0-0"), (10, 99, "bytes=10-99")],
)
def test_range_header(start: int, end: int | None, expected: str | None) -> None:
    assert range_header(start, end) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-9/10", (0, 9, 10)),
        ("bytes 10-99/*", (10, 99, None)),
        ("BYTES 3-3/4", (3, 3, 4)),
        (" bytes 0-0/1 ", (0, 0, 1)),
        ("bytes 0-10/10", None),  # last byte past the length
        ("bytes 5-4/10", None),
        ("bytes */10", None),  # an unsatisfied-range answer, not a range
        ("bytes 0-9", None),
        ("items 0-9/10", None),
        ("", None),
        ("bytes 0-" + "9" * 30 + "/*", None),
    ],
)
def test_parse_content_span(value: str, expected: tuple[int, int, int | None] | None) -> None:
    assert parse_content_span(value) == expected
