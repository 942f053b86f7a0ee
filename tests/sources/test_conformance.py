"""What every blob source answers: the same tests, run against each link of the chain.

A source is asked the way the blob handler asks it: ``open(want, first)``, the body's
size, the range planned against that size, then ``send``. Where a source differs for
a reason, the expectation is written down in :mod:`tests.sources.rig` (``Kind``) and
asserted here, never skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cacheproxy.errors import RangeNotSatisfiable, RegistryError
from cacheproxy.ranges import ByteRange
from tests.sources.rig import PushedBlob, Subject
from tests.support.forwarder import Fault
from tests.support.sink import MemorySink

GET = frozenset({"GET"})


async def serve(subject: Subject, wanted: ByteRange | None, sink: MemorySink) -> None:
    """Send ``wanted`` (None: the whole blob) into ``sink`` as the blob handler would."""
    first = wanted.first if wanted is not None and wanted.first is not None else 0
    body = await subject.source.open(subject.want, first)
    try:
        size = await body.size()
        if size is None:
            size = await body.final_size()
        start, end = (0, size - 1) if wanted is None else wanted.resolve(size)
        await body.send(sink, start, end)
    finally:
        body.close()


async def test_size_of_a_head_and_of_a_body(subject: Subject, blob: PushedBlob) -> None:
    before = len(subject.wire.requests)
    assert await subject.source.size(subject.want) == len(blob.data)
    # A HEAD fetches nothing: at most a HEAD upstream, never a GET.
    asked = subject.wire.requests[before:]
    assert all(method == "HEAD" for method, _ in asked), asked
    assert len(asked) == (1 if subject.kind.fetches else 0)

    body = await subject.source.open(subject.want)
    try:
        assert await body.size() == len(blob.data)
        # Where the bytes come from, once they have started to (the ledger asks after).
        assert body.origin == subject.kind.origin
        assert await body.final_size() == len(blob.data)
    finally:
        body.close()


@pytest.mark.parametrize("to_the_end", [True, False], ids=["end=None", "end=last"])
async def test_the_whole_body_byte_exact(
    subject: Subject, blob: PushedBlob, to_the_end: bool
) -> None:
    gets = subject.wire.count("GET", subject.path)
    body = await subject.source.open(subject.want)
    sink = MemorySink()
    try:
        await body.send(sink, 0, None if to_the_end else len(blob.data) - 1)
        assert body.origin == subject.kind.origin
    finally:
        body.close()
    assert sink.data == blob.data
    assert subject.kept() is subject.kind.keeps
    assert await subject.temp_files() == []
    # One upstream GET for the whole read (for the peer kinds, the peer's).
    assert subject.wire.count("GET", subject.path) - gets == (1 if subject.kind.fetches else 0)
    if subject.peer is not None:
        assert subject.peer.blob_path(blob.digest).read_bytes() == blob.data


RANGES: dict[str, Callable[[int], ByteRange]] = {
    "first bytes": lambda n: ByteRange(0, 99),
    "middle": lambda n: ByteRange(n // 3, n // 2),
    "from the middle on": lambda n: ByteRange(n // 2, None),
    "suffix": lambda n: ByteRange(None, 1000),
    "last byte": lambda n: ByteRange(n - 1, n - 1),
    "past the end, clipped": lambda n: ByteRange(n - 10, n + 10),
}


@pytest.mark.parametrize("name", RANGES)
async def test_a_range_byte_exact(subject: Subject, blob: PushedBlob, name: str) -> None:
    wanted = RANGES[name](len(blob.data))
    start, end = wanted.resolve(len(blob.data))
    sink = MemorySink()
    await serve(subject, wanted, sink)
    assert sink.data == blob.data[start : end + 1]


@pytest.mark.parametrize("beyond", [0, 1000])
async def test_a_range_past_the_end_is_not_satisfiable(
    subject: Subject, blob: PushedBlob, beyond: int
) -> None:
    size = len(blob.data)
    wanted = ByteRange(size + beyond, None)
    if subject.kind.asks_for_ranges:
        # The feed is asked for bytes from there on: the upstream's 416 comes back.
        with pytest.raises(RangeNotSatisfiable) as caught:
            await subject.source.open(subject.want, size + beyond)
    else:
        # The whole blob opens, and its true size plans the range: the handler answers 416.
        body = await subject.source.open(subject.want, size + beyond)
        try:
            with pytest.raises(RangeNotSatisfiable) as caught:
                wanted.resolve(await body.final_size())
        finally:
            body.close()
    # RFC 9110 section 15.5.17: a 416 names the representation's length.
    assert caught.value.headers["Content-Range"] == f"bytes */{size}"


async def test_a_broken_body_is_resumed_or_fails_never_ends_short(
    subject: Subject, blob: PushedBlob
) -> None:
    size = len(blob.data)
    fault = subject.wire.set_fault(
        Fault(subject.path, "truncate", offset=size // 2, once=True, methods=GET)
    )
    sink = MemorySink()
    if subject.kind.resumes:
        await serve(subject, None, sink)
        assert sink.data == blob.data
    else:
        with pytest.raises(RegistryError):
            await serve(subject, None, sink)
        # What did go out is a true prefix, and not all of it: never a clean short end.
        assert len(sink) < size
        assert sink.data == blob.data[: len(sink)]
    assert fault.hits == (1 if subject.kind.fetches else 0)
    if subject.kind.fetches and subject.kind.resumes:
        # Resumed with a Range from where the body broke (RFC 9110 section 14).
        first, resumed = subject.wire.ranges("GET", subject.path)
        # The whole blob, or (a segmented fill) its first segment.
        assert first is None or first.startswith("bytes=0-")
        assert resumed is not None and resumed.startswith("bytes=")
        assert 0 < int(resumed[len("bytes=") :].partition("-")[0]) <= size // 2
    assert await subject.temp_files() == []


async def test_a_wrong_byte_fails_before_the_last_byte_and_nothing_is_kept(
    subject: Subject, blob: PushedBlob
) -> None:
    size = len(blob.data)
    # Every GET of the blob, resumes included: no second try can mend it.
    fault = subject.wire.set_fault(Fault(subject.path, "corrupt", offset=size // 2, methods=GET))
    sink = MemorySink()
    if subject.kind.fetches:
        with pytest.raises(RegistryError):
            await serve(subject, None, sink)
        assert len(sink) < size, "the last byte went out before the blob was verified"
        assert fault.hits >= 1
        assert not subject.kept()
        if subject.peer is not None:
            assert not subject.peer.blob_path(blob.digest).exists()
        assert await subject.temp_files() == []
    else:
        # The disk serves what was verified when it was kept; the wire is not involved.
        await serve(subject, None, sink)
        assert sink.data == blob.data
        assert fault.hits == 0


async def test_a_wrong_byte_inside_a_range(subject: Subject, blob: PushedBlob) -> None:
    size = len(blob.data)
    wanted = ByteRange(size // 4, 3 * size // 4)
    start, end = wanted.resolve(size)
    # The byte at this offset of a response body lies inside the range whether the
    # upstream is asked for the whole blob or for the bytes from ``start`` on.
    fault = subject.wire.set_fault(Fault(subject.path, "corrupt", offset=size // 3, methods=GET))
    expected = blob.data[start : end + 1]
    sink = MemorySink()
    if not subject.kind.fetches:
        await serve(subject, wanted, sink)
        assert sink.data == expected
        assert fault.hits == 0
    elif subject.kind.verifies_ranges:
        # The range's last byte waits for the whole blob's verification, which fails.
        with pytest.raises(RegistryError):
            await serve(subject, wanted, sink)
        assert len(sink) < len(expected)
        assert not subject.kept()
    else:
        # A relay passes a range on as its feed answers it: a part of a blob cannot be
        # verified on its own, and the client checks the whole blob it assembles. So
        # the wrong byte goes through and the range ends cleanly.
        try:
            await serve(subject, wanted, sink)
        except RegistryError:
            # Unless the feed is a peer: its own fill verifies the whole blob and
            # breaks off when that fails, which may come before the range is through.
            assert subject.peer is not None
            assert len(sink) < len(expected)
        else:
            assert len(sink) == len(expected)
            assert sum(a != b for a, b in zip(sink.data, expected, strict=True)) == 1
        assert not subject.kept()
