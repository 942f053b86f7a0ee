"""One download of a blob into the cache, streamed to every reader while it lands.

A :class:`Fill` belongs to the registry of fills (``inflight.Fills``), never to a
request: a client that goes away leaves it running, and the blob is still cached.
Its bytes may come as ranges on several connections (``lanes.Lanes``): each
lands at its offset in the one temp file, and the digest is computed over the
contiguous prefix as it grows (``landing.Landing``). Readers open the temp file
themselves and send what is on disk with the kernel's sendfile, so N readers cost
N file descriptors and no memory. The last byte of a blob is released to readers
only after the whole blob has been verified, so a client never sees a clean end of
a wrong or short body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..accounting import Accounting, Origin
from ..errors import (
    REFUSALS,
    BlobUnknown,
    CacheWriteFailed,
    RegistryError,
    UpstreamBadContent,
    UpstreamUnavailable,
)
from ..oci import Digest
from ..rates import Rate
from ..store.files import BlobStore
from .fillstate import FillOptions, FillState, FillStats, Lease, Unleased
from .landing import Landing
from .lanes import Lanes
from .segments import Extents, RangeSupport, Span
from .source import Feed

log = logging.getLogger(__name__)

# After its first bytes, a reader of a fill wakes for this much at least.
SEND_BATCH = 1024 * 1024
# Readers waiting past the written bytes, given to the planner as hints.
MAX_HINTS = 16


class Fill:
    """The download of one blob into the cache."""

    def __init__(
        self,
        digest: Digest,
        store: BlobStore,
        upstream: str = "",
        repo: str = "",
        options: FillOptions | None = None,
        ranges: RangeSupport | None = None,
        lease: Lease | None = None,
    ) -> None:
        """``lease``: what the registry of fills grants it, told its size and readers."""
        self.digest = digest
        self.store = store
        # Who asked first: the ledger charges the transfer to this upstream and repo.
        self.upstream = upstream
        self.repo = repo
        self.options = options or FillOptions()
        self.ranges = ranges or RangeSupport()
        self.size: int | None = None
        self.state = FillState.STARTING
        self.error: RegistryError | None = None
        # The temp file is created only once a feed has answered with the blob: a
        # request for a digest nobody has costs no file.
        self._landing = Landing(store, digest)
        # (byte that wakes it, where its reader is, the future it sleeps on)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._feed: Feed | None = None
        self._lanes: Lanes | None = None
        #: False: serve the verified blob to its readers, but do not keep it (a blob
        #: larger than the cache may hold). The temp file goes when the last reader does.
        self.keep = True
        self._readers = 0
        self._lease = lease if lease is not None else Unleased()
        #: Cancelled by :meth:`stop` (nobody read it, and its slot was needed).
        self.preempted = False
        #: The node's own work (a prefetch, a preheat) that no client reads yet: held
        #: to prefetch_rate until one does.
        self.background = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pair(self) -> tuple[str, str]:
        """The (upstream, repository) this fill fetches under."""
        return (self.upstream, self.repo)

    @property
    def extents(self) -> Extents:
        """The spans of the blob on disk."""
        return self._landing.extents

    @property
    def tmp_path(self) -> Path | None:
        """The temp file (None until a feed answered with the blob)."""
        return self._landing.path

    # --- reader side ---------------------------------------------------------

    async def started(self) -> None:
        """Wait until a feed answered with the blob (size known if announced) or failed."""
        while self.state is FillState.STARTING:
            await self._wait_at(-1)
        if self.state is FillState.FAILED and self.tmp_path is None:
            assert self.error is not None
            raise self.error

    async def readable(self, pos: int, batch: int = 1, hold: bool = True) -> int:
        """Wait until bytes from ``pos`` on are on disk; returns the exclusive limit.

        ``batch``: how many bytes are worth a wake-up (a reader sends each wake-up's
        bytes with one system call): fewer only at the end of what may be sent. The
        bytes need not be contiguous with the start: a reader far ahead is served
        as soon as its part has landed (and is a hint for the planner meanwhile).
        ``hold``: the blob's last byte waits for its verification (False: a peer,
        which verifies the whole blob itself). Returns ``pos`` itself only when the
        fill is complete and ``pos`` is at its end. Raises the fill's error when it
        failed: the reader must then abort.
        """
        while True:
            if self.state is FillState.FAILED:
                assert self.error is not None
                raise self.error
            if self.state is FillState.DONE:
                assert self.size is not None
                return self.size
            end = self.extents.end_at(pos)
            # Hold back the final byte until the digest has been checked.
            last = self.size - 1 if self.size is not None and hold else None
            if end is not None and last is not None:
                end = min(end, last)
            if end is None or end <= pos:
                await self._wait_at(pos, pos)
                continue
            goal = pos + batch if last is None else min(pos + batch, last)
            if end >= goal:
                return end
            # Sleep until the goal's last byte lands, or, if that one is there
            # already (landed out of order), until the hole after ``end`` fills.
            wake = goal - 1 if self.extents.end_at(goal - 1) is None else end
            await self._wait_at(wake, pos)

    def attach(self) -> None:
        """A reader will read this fill (until :meth:`detach`)."""
        self._readers += 1
        if self._readers == 1:
            # The gate counts it again: a fill someone reads is not preempted.
            self._lease.readers(abandoned=False)

    def detach(self) -> None:
        self._readers -= 1
        if not self._readers and not self.ended:
            self._lease.readers(abandoned=True)
        self._drop_transient()

    @property
    def ended(self) -> bool:
        """Done or failed."""
        return self.state in (FillState.DONE, FillState.FAILED)

    def stop(self) -> None:
        """Cancel the fill (nobody reads it, and its slot is needed): its temp file
        goes and nothing of it is kept; a reader that still finds it sees it failed."""
        self.preempted = True
        if self._task is not None:
            self._task.cancel()
        # Not begun yet: :meth:`run` stops at its first step.

    def _drop_transient(self) -> None:
        if not self.keep and self.state is FillState.DONE and not self._readers:
            self._landing.discard()

    def open_reader(self) -> int:
        """Open the blob's bytes for one reader (temp file, or the final file once done).

        Call it once :meth:`started` returned.
        """
        try:
            if self.tmp_path is None:
                raise FileNotFoundError(self.digest)
            return os.open(self.tmp_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            blob = self.store.open(self.digest)
            if blob is None:
                raise self.error or UpstreamUnavailable("blob fill failed") from None
            return blob.fd

    def coming(self) -> list[Span]:
        """The spans asked for and on their way (every lane in flight)."""
        return self._lanes.coming() if self._lanes is not None else []

    def offers(self, pos: int) -> bool:
        """Whether byte ``pos`` is on disk or on its way: a peer asking for a range
        from there is served as it lands (never a fetch of its own)."""
        if self.state is FillState.DONE:
            return True
        if self.state is not FillState.RUNNING:
            return False
        if self.extents.end_at(pos) is not None:
            return True
        return any(span.start <= pos < span.end for span in self.coming())

    def paced_by(self, origin: Origin) -> list[Rate]:
        """An upstream's bytes under upstream_rate; a background fill's, from any
        feed, under prefetch_rate too (a client that joins it lifts that)."""
        rates = self.options.rates
        out = [rates.upstream] if origin == "upstream" and rates.upstream is not None else []
        if self.background and rates.prefetch is not None:
            out.append(rates.prefetch)
        return out

    def progress(self) -> int:
        """Bytes on disk from the start without a hole."""
        return self.extents.prefix

    def hints(self) -> list[int]:
        """Positions readers wait at that are not on disk yet (the lowest few)."""
        wanted = {p for _, p, _ in self._waiters if p >= 0 and self.extents.end_at(p) is None}
        return sorted(wanted)[:MAX_HINTS]

    async def wait_done(self) -> None:
        while self.state not in (FillState.DONE, FillState.FAILED):
            await self._wait_at(-1)
        if self.error is not None:
            raise self.error

    async def _wait_at(self, wake: int, pos: int = -1) -> None:
        """Sleep until the byte at ``wake`` lands or the state changes (``wake`` -1:
        only that); ``pos``: where the reader is (a hint for the planner)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (wake, pos, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        finally:
            # Woken waiters are off the list already; a cancelled one takes itself off.
            if waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)

    def _wake(self, start: int, end: int) -> None:
        """Wake the readers waiting for a byte of ``start..end`` (exclusive)."""
        kept = []
        for entry in self._waiters:
            if start <= entry[0] < end:
                if not entry[2].done():
                    entry[2].set_result(None)
            else:
                kept.append(entry)
        self._waiters = kept

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for _, _, waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

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
        self._task = asyncio.current_task()
        try:
            if self.preempted:
                raise asyncio.CancelledError
            options = self.options
            lanes = self._lanes = Lanes(
                self,
                [feed],
                stats,
                options.segment_min_size,
                self.ranges,
                self.upstream,
                options.resume_backoff,
            )
            await lanes.run()
            try:
                await self._verify(stats)
            except UpstreamBadContent:
                # Whoever sent the bytes answers for them (pieces from several peers:
                # the swarm's rule).
                lanes.blame()
                raise
            if self.keep:
                # Recorded (linked) before the store has it, and whole even if the fill
                # is cancelled meanwhile (a shutdown): one index write.
                await asyncio.shield(self._lease.vouched())
                await self._landing.commit()
                accounting.stored(self.upstream, self.repo, self.extents.prefix)
                log.info("cached %s (%d bytes)", self.digest, self.extents.prefix)
                # What follows it (uploads, the keeper) is told before any reader has
                # the last byte.
                await asyncio.shield(self._lease.kept())
            else:
                log.info("served %s (%d bytes) without keeping it", self.digest, self.size)
            self.state = FillState.DONE
            stats.count_completed()
            self._drop_transient()
        except asyncio.CancelledError:
            if self.preempted:
                self._fail(UpstreamUnavailable("the download gave its slot to another"))
            else:
                self._fail(UpstreamUnavailable("proxy shutting down"))
            raise
        except RegistryError as exc:
            # The upstream refusing the pair before any feed answered is its answer
            # under this repository, not a failed fill: counted, it would move only
            # for digests this node does not hold (a held one is refused by a
            # confirmation instead), and /metrics would tell what is cached.
            refused = isinstance(exc, REFUSALS) and self.state is FillState.STARTING
            self._fail(exc)
            if not refused:
                stats.count_failed()
        except Exception as exc:  # a bug or an OS error: no reader may hang on it
            log.exception("fill of %s failed", self.digest)
            self._fail(UpstreamUnavailable(f"blob fill failed: {type(exc).__name__}"))
            stats.count_failed()
        finally:
            await self._landing.close()
            if self._lanes is not None:
                self._charge(self._lanes, accounting)
            self._wake_all()
        if self._lanes is not None and self.state is FillState.DONE:
            # Verified: this node now serves every piece of it (its readers have it).
            await self._lanes.verified()

    def _charge(self, lanes: Lanes, accounting: Accounting) -> None:
        """Tell the ledger what came in: the transfer is charged to the starter's pair."""
        if lanes.received:
            accounting.fetched(self.upstream, self.repo, "blob", lanes.received)
        if lanes.received_shared:
            accounting.shared(self.upstream, self.repo, "get", 0, lanes.received_shared)

    def _fail(self, exc: RegistryError) -> None:
        self.state = FillState.FAILED
        self.error = exc
        self._landing.discard()
        # A digest the upstream does not have is an answer, not a fault; a fill
        # nobody read, cancelled for another, is the gate's policy.
        quiet = isinstance(exc, BlobUnknown) or self.preempted
        level = logging.INFO if quiet else logging.WARNING
        log.log(level, "fill of %s failed: %s", self.digest, exc.message)

    def begin(self, size: int | None) -> None:
        """A feed answered with the blob: its size (if announced) and the temp file."""
        limit = self.options.max_blob_size
        if limit and size is not None and size > limit:
            raise UpstreamBadContent(f"blob of {size} bytes is over max_blob_size ({limit})")
        self.size = size
        # Larger than the cache may hold: served to its readers, never kept.
        self.keep = self._lease.sized(size)
        self._landing.create()
        self.state = FillState.RUNNING
        self._wake_all()

    async def write_at(self, offset: int, parts: Sequence[bytes | memoryview]) -> None:
        """Put ``parts`` (consecutive bytes) at ``offset`` and wake the readers they serve."""
        end = offset + sum(len(p) for p in parts)
        limit = self.size if self.size is not None else self.options.max_blob_size
        if limit and end > limit:
            raise UpstreamBadContent("blob is over max_blob_size")
        try:
            await self._landing.write(offset, parts)
        except OSError as exc:
            raise CacheWriteFailed(f"writing the blob failed: {exc.strerror}") from exc
        self._wake(offset, end)

    async def _verify(self, stats: FillStats) -> None:
        """Check the whole blob: every lane done, its length, its digest."""
        size = self.extents.prefix
        if (self.size is not None and size != self.size) or self.extents.total != size:
            raise UpstreamBadContent("upstream blob has the wrong length")
        actual = await self._landing.hexdigest()
        if actual != self.digest.hex:
            stats.count_digest_mismatch()
            log.error(
                "upstream sent wrong bytes for %s (got %s:%s); discarded",
                self.digest,
                self.digest.algorithm,
                actual,
            )
            raise UpstreamBadContent("upstream blob does not match its digest")
        self.size = size
