"""The Fill state machine, fed by a fake Feed: no network, every step in the test's hands."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import pytest

from cacheproxy.accounting import NullAccounting, Origin
from cacheproxy.blobs.fill import Fill
from cacheproxy.blobs.fillbody import FillBody
from cacheproxy.blobs.fillstate import FillOptions, FillState, FillStats
from cacheproxy.blobs.landing import Landing
from cacheproxy.errors import (
    BlobUnknown,
    CacheWriteFailed,
    RegistryError,
    UpstreamBadContent,
    UpstreamUnavailable,
)
from cacheproxy.layout import CacheLayout
from cacheproxy.oci import Digest, parse_digest
from cacheproxy.store.files import BlobStore
from tests.support.sink import MemorySink

DATA = bytes(range(256)) * 1000  # 256,000 bytes
EOF = b""


def digest_of(data: bytes) -> Digest:
    return parse_digest("sha256:" + hashlib.sha256(data).hexdigest())


class Body:
    """A response body: scripted chunks, then a clean end or a break; or, with
    ``live``, whatever the test puts in the queue (``EOF`` ends it, an exception
    breaks it)."""

    def __init__(
        self, chunks: Sequence[bytes] = (), breaks: bool = False, live: bool = False
    ) -> None:
        self._chunks = list(chunks)
        self._breaks = breaks
        self.queue: asyncio.Queue[bytes | Exception] | None = asyncio.Queue() if live else None

        #: Bytes handed out so far (aiohttp's StreamReader.total_bytes counts arrivals).
        self.total_bytes = 0

    async def readchunk(self) -> tuple[bytes, bool]:
        """As aiohttp's ``StreamReader.readchunk``: (data, end of an HTTP chunk)."""
        if self.queue is not None:
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
        elif self._chunks:
            item = self._chunks.pop(0)
        elif self._breaks:
            raise aiohttp.ClientPayloadError("connection lost mid-body")
        else:
            item = EOF
        self.total_bytes += len(item)
        return item, False


@dataclass
class Answer:
    """What a feed's ``open`` returns in place of an aiohttp response."""

    status: int
    content_length: int | None
    content: Body
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False
    #: No socket under it (a real answer's is tuned by the body reader).
    connection: None = None

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.released = True


def whole(data: bytes, upto: int | None = None, *, announced: int | None = None) -> Answer:
    """A 200 with the whole blob announced; ``upto``: the body breaks there."""
    sent = data if upto is None else data[:upto]
    chunks = [sent[i : i + 50_000] for i in range(0, len(sent), 50_000)]
    size = len(data) if announced is None else announced
    return Answer(200, size, Body(chunks, breaks=upto is not None))


def part(
    data: bytes, start: int, *, said_start: int | None = None, total: int | None = None
) -> Answer:
    """A 206 with the bytes from ``start`` (the Content-Range may be told to lie)."""
    rest = data[start:]
    first = start if said_start is None else said_start
    size = len(data) if total is None else total
    headers = {"Content-Range": f"bytes {first}-{len(data) - 1}/{size}"}
    return Answer(206, len(rest), Body([rest]), headers)


def live(size: int | None) -> Answer:
    """A 200 whose body the test delivers through ``answer.content.queue``."""
    return Answer(200, size, Body(live=True))


class FakeFeed:
    """Answers each ``open`` with the next scripted answer (or raises it)."""

    origin: Origin = "upstream"
    lanes = 1

    def __init__(self, *answers: Answer | RegistryError) -> None:
        self._answers = list(answers)
        self.offsets: list[int] = []
        self.blamed = 0

    async def open(self, offset: int, end: int | None = None) -> aiohttp.ClientResponse:
        self.offsets.append(offset)
        answer = self._answers.pop(0)
        if isinstance(answer, RegistryError):
            raise answer
        return cast(aiohttp.ClientResponse, answer)

    def blame(self) -> None:
        self.blamed += 1


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    store = BlobStore(CacheLayout(tmp_path / "cache"))
    store.prepare()
    return store


@dataclass
class Running:
    fill: Fill
    feed: FakeFeed
    stats: FillStats
    task: asyncio.Task[None]


Start = Callable[..., Running]


@pytest.fixture
async def start(store: BlobStore) -> AsyncIterator[Start]:
    """``await start(feed, data=DATA)``: a fill of ``data`` running on ``feed``."""
    tasks: list[asyncio.Task[None]] = []

    def begin(feed: FakeFeed, data: bytes = DATA) -> Running:
        options = FillOptions(resume_backoff=0)
        fill = Fill(digest_of(data), store, "docker.io", "app", options)
        stats = FillStats()
        task = asyncio.create_task(fill.run(feed, stats, NullAccounting()))
        tasks.append(task)
        return Running(fill, feed, stats, task)

    yield begin
    for task in tasks:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def temp_files(store: BlobStore) -> list[Path]:
    return list(store.tmp_dir.iterdir())


async def test_a_fill_lands_verified_and_is_committed(start: Start, store: BlobStore) -> None:
    run = start(FakeFeed(whole(DATA)))
    await run.task
    assert run.fill.state is FillState.DONE and run.fill.verified
    assert store.read(run.fill.digest) == DATA
    assert temp_files(store) == []
    assert run.feed.offsets == [0]
    assert (run.stats.completed, run.stats.failed, run.stats.upstream_bytes) == (1, 0, len(DATA))


async def test_readable_holds_the_last_byte_until_the_blob_is_verified(start: Start) -> None:
    answer = live(len(DATA))
    run = start(FakeFeed(answer))
    await run.fill.started()
    assert answer.content.queue is not None
    await answer.content.queue.put(DATA)
    # Every byte is on disk, but the last one is not readable yet.
    assert await run.fill.readable(0) == len(DATA) - 1
    last = asyncio.create_task(run.fill.readable(len(DATA) - 1))
    for _ in range(10):
        await asyncio.sleep(0)  # the fill waits for the body's end: nothing can change
    assert not last.done()
    assert run.fill.extents.prefix == len(DATA) and not run.fill.verified
    await answer.content.queue.put(EOF)
    assert await last == len(DATA)
    assert run.fill.verified


async def test_a_failure_wakes_every_reader_with_the_error(start: Start, store: BlobStore) -> None:
    answer = live(len(DATA))
    run = start(FakeFeed(answer))
    await run.fill.started()
    readers = [
        asyncio.create_task(run.fill.readable(len(DATA) - 1)),
        asyncio.create_task(run.fill.wait_done()),
    ]
    assert answer.content.queue is not None
    wrong = bytearray(DATA)
    wrong[1234] ^= 0xFF
    await answer.content.queue.put(bytes(wrong))
    await answer.content.queue.put(EOF)
    for reader in readers:
        with pytest.raises(UpstreamBadContent):
            await reader
    assert run.fill.state is FillState.FAILED
    assert temp_files(store) == []
    # A reader arriving later gets the same error, not a hang.
    with pytest.raises(UpstreamBadContent):
        await run.fill.readable(0)


async def test_a_wrong_byte_fails_the_fill_blames_the_feed_and_keeps_nothing(
    start: Start,
    store: BlobStore,
) -> None:
    wrong = bytearray(DATA)
    wrong[-1] ^= 0x01
    run = start(FakeFeed(whole(bytes(wrong))), DATA)
    await run.task
    assert isinstance(run.fill.error, UpstreamBadContent)
    assert (run.stats.digest_mismatches, run.stats.failed, run.feed.blamed) == (1, 1, 1)
    assert not store.exists(run.fill.digest)
    assert temp_files(store) == []


async def test_a_disk_that_cannot_take_the_bytes_fails_the_fill_and_blames_no_feed(
    start: Start, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def full(self: Landing, offset: int, parts: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Landing, "write", full)
    run = start(FakeFeed(whole(DATA)))
    await run.task
    assert isinstance(run.fill.error, CacheWriteFailed)
    # Not resumed (no feed broke) and nobody blamed.
    assert run.feed.offsets == [0] and run.feed.blamed == 0 and run.stats.resumed == 0
    assert not store.exists(run.fill.digest) and temp_files(store) == []


async def test_a_broken_body_is_resumed_from_where_it_broke(start: Start, store: BlobStore) -> None:
    half = len(DATA) // 2
    run = start(FakeFeed(whole(DATA, upto=half), part(DATA, half)))
    await run.task
    assert run.feed.offsets == [0, half]
    assert run.stats.resumed == 1
    assert store.read(run.fill.digest) == DATA


async def test_a_resume_answered_with_the_whole_blob_skips_what_is_on_disk(
    start: Start,
    store: BlobStore,
) -> None:
    # RFC 9110 section 14.2: a server may ignore Range and send the whole blob.
    half = len(DATA) // 2 + 7
    run = start(FakeFeed(whole(DATA, upto=half), whole(DATA)))
    await run.task
    assert run.feed.offsets == [0, half]
    assert store.read(run.fill.digest) == DATA


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda half: part(DATA, half, said_start=half + 1), id="wrong start"),
        pytest.param(lambda half: part(DATA, half, total=len(DATA) + 5), id="wrong total"),
        pytest.param(lambda half: Answer(416, None, Body()), id="416"),
    ],
)
async def test_a_resume_answered_with_the_wrong_range_goes_on_in_one_stream(
    start: Start,
    store: BlobStore,
    answer: Callable[[int], Answer],
) -> None:
    """A wrong answer to a range is never written: the blob goes on in one stream from
    what is on disk (and the upstream is remembered as one that mishandles ranges)."""
    half = len(DATA) // 2
    run = start(FakeFeed(whole(DATA, upto=half), answer(half), part(DATA, half)))
    await run.task
    assert store.read(run.fill.digest) == DATA
    assert run.feed.offsets == [0, half, half]
    assert run.stats.single_stream == 1
    assert temp_files(store) == []


async def test_resuming_is_bounded(start: Start, store: BlobStore) -> None:
    # Each answer brings a few more bytes, then breaks again.
    answers = [whole(DATA, upto=n) for n in (1000, 2000, 3000, 4000)]
    run = start(FakeFeed(*answers))
    await run.task
    assert isinstance(run.fill.error, UpstreamUnavailable)
    assert run.feed.offsets == [0, 1000, 2000, 3000]
    assert temp_files(store) == []


async def test_a_body_failing_with_a_registry_error_fails_the_fill_unresumed(
    start: Start, store: BlobStore
) -> None:
    """UpstreamUnavailable is a ConnectionError, so an OSError, like the breaks the
    lanes resume: the lanes look for a RegistryError first, and the fill fails with
    the error it got, as before."""
    answer = live(len(DATA))
    run = start(FakeFeed(answer))
    await run.fill.started()
    assert answer.content.queue is not None
    await answer.content.queue.put(DATA[:1000])
    down = UpstreamUnavailable("the upstream went away")
    await answer.content.queue.put(down)
    await run.task
    assert run.fill.error is down
    assert run.feed.offsets == [0] and run.stats.resumed == 0 and run.stats.failed == 1
    assert temp_files(store) == []


async def test_more_bytes_than_announced_fail_the_fill(start: Start, store: BlobStore) -> None:
    run = start(FakeFeed(whole(DATA, announced=len(DATA) - 10)))
    await run.task
    assert isinstance(run.fill.error, UpstreamBadContent)
    assert temp_files(store) == []


async def test_a_feed_that_cannot_open_fails_the_fill_and_its_waiters(
    start: Start, store: BlobStore
) -> None:
    run = start(FakeFeed(BlobUnknown("not upstream either")))
    with pytest.raises(BlobUnknown):
        await run.fill.started()
    await run.task
    assert run.fill.state is FillState.FAILED
    assert temp_files(store) == []


async def test_a_cancelled_fill_removes_its_temp_file(start: Start, store: BlobStore) -> None:
    answer = live(len(DATA))
    run = start(FakeFeed(answer))
    await run.fill.started()
    assert answer.content.queue is not None
    await answer.content.queue.put(DATA[:1000])
    assert await run.fill.readable(0) == 1000
    assert len(temp_files(store)) == 1
    run.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run.task
    assert isinstance(run.fill.error, UpstreamUnavailable)
    assert temp_files(store) == []


async def test_a_range_being_filled_ends_only_after_the_whole_blob_is_verified(
    start: Start,
) -> None:
    answer = live(len(DATA))
    run = start(FakeFeed(answer))
    await run.fill.started()
    sink = MemorySink()
    reader = asyncio.create_task(FillBody(run.fill, started=True).send(sink, 0, 99))
    assert answer.content.queue is not None
    await answer.content.queue.put(DATA[:5000])
    async with asyncio.timeout(5):
        while len(sink) < 99:
            await asyncio.sleep(0)
    # The range's bytes are all on disk, its last one waits for the verdict on the whole.
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(sink) == 99 and not reader.done()
    await answer.content.queue.put(DATA[5000:])
    await answer.content.queue.put(EOF)
    await reader
    assert sink.data == DATA[:100]


async def test_a_peer_reader_gets_a_range_as_it_lands_nothing_held_back(start: Start) -> None:
    """A peer verifies the whole blob itself: its range ends as soon as it is on disk."""
    answer = live(len(DATA))
    run = start(FakeFeed(answer))
    await run.fill.started()
    sink = MemorySink()
    assert answer.content.queue is not None
    await answer.content.queue.put(DATA[:5000])
    async with asyncio.timeout(5):
        await FillBody(run.fill, started=False, hold=False).send(sink, 0, 99)
        assert sink.data == DATA[:100]
        # The whole blob but the end of the body: every byte, the last one too.
        await answer.content.queue.put(DATA[5000:])
        whole_blob = MemorySink()
        await FillBody(run.fill, started=False, hold=False).send(whole_blob, 0, len(DATA) - 1)
        assert whole_blob.data == DATA and not run.fill.verified
    await answer.content.queue.put(EOF)
    await run.task


async def test_a_fill_offers_what_is_on_disk_or_on_its_way(start: Start) -> None:
    answer = live(len(DATA))
    run = start(FakeFeed(answer))
    assert not run.fill.offers(0)  # nothing answered yet
    await run.fill.started()
    # The one lane's answer came: all of the blob is on its way.
    assert run.fill.offers(0) and run.fill.offers(len(DATA) - 1)
    assert [(s.start, s.end) for s in run.fill.coming()] == [(0, len(DATA))]
    assert answer.content.queue is not None
    await answer.content.queue.put(DATA)
    await answer.content.queue.put(EOF)
    await run.task
    assert run.fill.offers(123) and run.fill.coming() == []
