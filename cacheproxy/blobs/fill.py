"""One download of a blob into the cache, streamed to every reader while it lands.

A :class:`Fill` belongs to the registry of fills (``inflight.Fills``), never to a
request: a client that goes away leaves it running, and the blob is still cached. Readers
open the temp file themselves and read up to ``written``, so N readers cost N
file descriptors and no memory. The last byte of a blob is released to readers
only after the whole blob has been verified, so a client never sees a clean end
of a wrong or short body.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from enum import Enum

import aiohttp

from ..accounting import Accounting, Origin
from ..errors import BlobUnknown, RegistryError, UpstreamBadContent, UpstreamUnavailable
from ..oci import Digest
from ..ranges import parse_content_range
from ..store.files import BlobStore
from .source import Feed, Sink

log = logging.getLogger(__name__)

# Below this a chunk is written and hashed on the loop (microseconds); above it
# the work goes to a thread so hashing a fast upstream uses the other core.
INLINE_CHUNK = 256 * 1024
MAX_CHUNK = 1024 * 1024
# A reader of a fill sends what has landed in reads of up to this much.
READ_CHUNK = 1024 * 1024
RESUME_ATTEMPTS = 3
RESUME_BACKOFF = 0.5


class FillState(Enum):
    STARTING = "starting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass
class FillStats:
    """Counters the metrics and the tests read."""

    upstream_gets: int = 0
    peer_gets: int = 0
    peer_bytes: int = 0
    shared_gets: int = 0
    shared_bytes: int = 0
    upstream_bytes: int = 0
    completed: int = 0
    failed: int = 0
    resumed: int = 0
    digest_mismatches: int = 0
    # Misses streamed through uncached because the disk was nearly full.
    streamed_through: int = 0
    by_digest: dict[str, int] = field(default_factory=dict)


class Fill:
    """The download of one blob into the cache."""

    def __init__(
        self,
        digest: Digest,
        store: BlobStore,
        upstream: str = "",
        repo: str = "",
        resume_backoff: float = RESUME_BACKOFF,
    ) -> None:
        self.digest = digest
        self.store = store
        # Who asked first: the ledger charges the transfer to this upstream and repo.
        self.upstream = upstream
        self.repo = repo
        # Bytes received from the upstream, and from the shared tier (the ledger's).
        self.received = 0
        self.received_shared = 0
        self.size: int | None = None
        self.written = 0
        self.state = FillState.STARTING
        self.error: RegistryError | None = None
        self.tmp_path, self._fd = store.new_temp(digest)
        self._changed = asyncio.Event()
        self._hasher = digest.hasher()
        self._feed: Feed | None = None
        #: False: serve the verified blob to its readers, but do not keep it (a blob
        #: larger than the cache may hold). The temp file goes when the last reader does.
        self.keep = True
        self._readers = 0
        # Seconds before the first resume, doubling for each next one.
        self._resume_backoff = resume_backoff

    # --- reader side ---------------------------------------------------------

    async def started(self) -> None:
        """Wait until the upstream answered with the blob (size known) or failed."""
        while self.state is FillState.STARTING:
            await self._wait()
        if self.state is FillState.FAILED and self.written == 0:
            assert self.error is not None
            raise self.error

    async def readable(self, pos: int) -> int:
        """Wait until bytes past ``pos`` may be read; returns the exclusive limit.

        Returns ``pos`` itself only when the fill is complete and ``pos`` is at its
        end. Raises the fill's error when it failed: the reader must then abort.
        """
        while True:
            if self.state is FillState.FAILED:
                assert self.error is not None
                raise self.error
            if self.state is FillState.DONE:
                return self.written
            # Hold back the final byte until the digest has been checked.
            limit = self.written
            if self.size is not None:
                limit = min(limit, self.size - 1)
            if limit > pos:
                return limit
            await self._wait()

    def attach(self) -> None:
        """A reader will read this fill (until :meth:`detach`)."""
        self._readers += 1

    def detach(self) -> None:
        self._readers -= 1
        self._drop_transient()

    def _drop_transient(self) -> None:
        if not self.keep and self.state is FillState.DONE and not self._readers:
            self.store.discard(self.tmp_path)

    def open_reader(self) -> int:
        """Open the blob's bytes for one reader (temp file, or the final file once done)."""
        try:
            return os.open(self.tmp_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            blob = self.store.open(self.digest)
            if blob is None:
                raise self.error or UpstreamUnavailable("blob fill failed") from None
            return blob.fd

    def progress(self) -> int:
        """Bytes on disk so far."""
        return self.written

    async def wait_done(self) -> None:
        while self.state not in (FillState.DONE, FillState.FAILED):
            await self._wait()
        if self.error is not None:
            raise self.error

    async def _wait(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- writer side ---------------------------------------------------------

    @property
    def verified(self) -> bool:
        """The whole blob is in the cache and matched its digest."""
        return self.state is FillState.DONE

    @property
    def origin(self) -> Origin:
        """Where this fill's bytes come from (a peer, the shared tier, the upstream)."""
        return self._feed.origin if self._feed is not None else "upstream"

    async def run(self, feed: Feed, stats: FillStats, accounting: Accounting) -> None:
        """Fetch, verify and commit the blob; never raises (readers see ``error``)."""
        self._feed = feed
        try:
            await self._fetch(feed, stats)
            if self.keep:
                await asyncio.to_thread(self.store.commit, self.tmp_path, self._fd, self.digest)
                accounting.stored(self.upstream, self.repo, self.written)
                log.info("cached %s (%d bytes)", self.digest, self.written)
            else:
                log.info("served %s (%d bytes) without keeping it", self.digest, self.written)
            self.state = FillState.DONE
            stats.completed += 1
            self._drop_transient()
        except asyncio.CancelledError:
            self._fail(UpstreamUnavailable("proxy shutting down"))
            raise
        except RegistryError as exc:
            self._fail(exc)
            stats.failed += 1
        except Exception as exc:  # a bug or an OS error: no reader may hang on it
            log.exception("fill of %s failed", self.digest)
            self._fail(UpstreamUnavailable(f"blob fill failed: {type(exc).__name__}"))
            stats.failed += 1
        finally:
            os.close(self._fd)
            if self.received:
                accounting.fetched(self.upstream, self.repo, "blob", self.received)
            if self.received_shared:
                accounting.shared(self.upstream, self.repo, "get", 0, self.received_shared)
            self._notify()

    def _fail(self, exc: RegistryError) -> None:
        self.state = FillState.FAILED
        self.error = exc
        self.store.discard(self.tmp_path)
        # A digest the upstream does not have is an answer, not a fault.
        level = logging.INFO if isinstance(exc, BlobUnknown) else logging.WARNING
        log.log(level, "fill of %s failed: %s", self.digest, exc.message)

    async def _fetch(self, feed: Feed, stats: FillStats) -> None:
        attempts = 0
        while True:
            resp = await feed.open(self.written)
            origin = feed.origin
            if origin == "peer":
                stats.peer_gets += 1
            elif origin == "shared":
                stats.shared_gets += 1
            else:
                stats.upstream_gets += 1
                key = str(self.digest)
                stats.by_digest[key] = stats.by_digest.get(key, 0) + 1
            try:
                self._accept_headers(resp)
                await self._copy(resp, stats, origin)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # RFC 9110 section 14: resume a broken body from where it broke.
                attempts += 1
                if attempts > RESUME_ATTEMPTS:
                    raise UpstreamUnavailable("upstream broke off the blob") from exc
                log.info(
                    "upstream body of %s broke at %d (%s), resuming",
                    self.digest,
                    self.written,
                    type(exc).__name__,
                )
                stats.resumed += 1
                await asyncio.sleep(self._resume_backoff * 2 ** (attempts - 1))
                continue
            finally:
                resp.release()
            break
        try:
            self._verify(stats)
        except UpstreamBadContent:
            feed.blame()
            raise

    def _accept_headers(self, resp: aiohttp.ClientResponse) -> None:
        """Take the size from the first answer; check a resumed answer's range."""
        if self.written == 0 and resp.status == 200:
            self.size = resp.content_length
        elif resp.status == 206:
            crange = resp.headers.get("Content-Range", "")
            start, total = parse_content_range(crange)
            if start != self.written or (self.size is not None and total not in (None, self.size)):
                raise UpstreamBadContent("upstream answered a resume with the wrong range")
        elif resp.status == 200:
            # A resume answered with the whole body: skip what is already on disk.
            pass
        else:
            raise UpstreamBadContent(f"upstream answered {resp.status} for a blob")
        if self.state is FillState.STARTING:
            self.state = FillState.RUNNING
            self._notify()

    async def _copy(self, resp: aiohttp.ClientResponse, stats: FillStats, origin: Origin) -> None:
        skip = self.written if resp.status == 200 else 0
        content = resp.content
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            parts = [chunk]
            total = len(chunk)
            while total < MAX_CHUNK:
                more = content.read_nowait(MAX_CHUNK - total)
                if not more:
                    break
                parts.append(more)
                total += len(more)
            data = b"".join(parts) if len(parts) > 1 else chunk
            if origin == "peer":
                stats.peer_bytes += len(data)
            elif origin == "shared":
                stats.shared_bytes += len(data)
                self.received_shared += len(data)
            else:
                stats.upstream_bytes += len(data)
                self.received += len(data)
            if skip:
                cut = min(skip, len(data))
                data, skip = data[cut:], skip - cut
                if not data:
                    continue
            if self.size is not None and self.written + len(data) > self.size:
                raise UpstreamBadContent("upstream sent more bytes than announced")
            if len(data) >= INLINE_CHUNK:
                await asyncio.to_thread(self._append, data)
            else:
                self._append(data)
            self._notify()
        if self.size is not None and self.written < self.size:
            raise aiohttp.ClientPayloadError("upstream body ended early")

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._hasher.update(data)
        self.written += len(data)

    def _verify(self, stats: FillStats) -> None:
        actual = self._hasher.hexdigest()
        if self.size is not None and self.written != self.size:
            raise UpstreamBadContent("upstream blob has the wrong length")
        if actual != self.digest.hex:
            stats.digest_mismatches += 1
            log.error(
                "upstream sent wrong bytes for %s (got %s:%s); discarded",
                self.digest,
                self.digest.algorithm,
                actual,
            )
            raise UpstreamBadContent("upstream blob does not match its digest")
        self.size = self.written


class FillBody:
    """A blob as its fill lands: readers tail the temp file up to what is verified."""

    def __init__(self, fill: Fill, started: bool) -> None:
        self._fill = fill
        self._started = started
        self._closed = False
        fill.attach()

    @property
    def origin(self) -> Origin:
        # Joining another request's fill costs no transfer: the cache served it.
        return self._fill.origin if self._started else "cache"

    async def size(self) -> int | None:
        await self._fill.started()
        return self._fill.size

    async def final_size(self) -> int:
        await self._fill.wait_done()
        assert self._fill.size is not None
        return self._fill.size

    async def send(self, sink: Sink, start: int, end: int | None) -> None:
        """Tail the fill. The last byte of the range, like the last byte of a whole
        blob, goes out only once the whole blob is verified: a range's bytes cannot
        be checked on their own."""
        fill = self._fill
        fd = fill.open_reader()
        try:
            pos = start
            while end is None or pos <= end:
                limit = await fill.readable(pos)
                if limit <= pos:
                    break
                stop = limit if end is None else min(limit, end + 1)
                if end is not None and stop > end and not fill.verified:
                    stop = end
                    if stop <= pos:
                        await fill.wait_done()
                        continue
                while pos < stop:
                    chunk = os.pread(fd, min(READ_CHUNK, stop - pos), pos)
                    if not chunk:
                        raise OSError("blob file shorter than its fill")
                    await sink.write(chunk)
                    pos += len(chunk)
        finally:
            os.close(fd)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._fill.detach()
