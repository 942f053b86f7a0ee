"""The lanes of one fill: byte ranges of one blob fetched on several connections.

Object stores and CDNs behind registries throttle each connection, so a blob
above ``segment_min_size`` is asked for as ranges on up to ``feed.lanes``
connections at once (RFC 9110 section 14). The first request asks for the first
``segment_min_size`` bytes and learns the blob's length from its
``Content-Range``, so nothing waits for a HEAD; a blob no bigger is done in that
one stream. Which range goes to which feed next is :func:`segments.plan`'s choice.

In cluster mode the lanes may also come from a :class:`Swarm`, which a feed brings
(``source.Swarmed``): the peers holding the blob, each a feed of its own, asked for
pieces by the swarm policy (``cacheproxy/swarm/``). The swarm then decides for peer
sources and the segment plan for the feeds given (the owner, then the upstream):
those stay idle while the swarm is the sole planner, and take the ranges it leaves
once the owner is gone. A peer's lane that fails is not resumed: its rest goes back
to the plan. The lanes own their swarm: they tell it where they stand with each
plan they ask of it, and it never calls them.

Robust by construction:

- a lane that breaks (a reset, a short body, a read timeout, which is also how a
  stalled lane ends) resumes from its own offset, counted against one retry
  budget per blob, as a single stream's resume always was;
- a feed that answers a range with a 200, a wrong ``Content-Range`` or no length
  puts the blob on one stream, and is remembered (:class:`segments.RangeSupport`);
- no two lanes ever ask for the same byte, and no byte on disk is asked again,
  so the bytes fetched stay equal to the blob's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiohttp

from ..errors import (
    CacheWriteFailed,
    RangeNotSatisfiable,
    RegistryError,
    UpstreamBadContent,
    UpstreamUnavailable,
)
from ..rates import Pacer, window_for
from .fillstate import FillStats
from .reading import MAX_CHUNK, BodyReader, drop, keep
from .segments import Answer, RangeSupport, Span, chunk_size, plan, read_answer
from .source import Feed, Progress, Swarm, Swarmed
from .target import Lane, Target

log = logging.getLogger(__name__)

RESUME_ATTEMPTS = 3
RESUME_BACKOFF = 0.5
# Seconds between looks at a swarm's plan while no lane ends.
SWARM_TICK = 0.05
# What counts as a broken lane (resumed from its offset) rather than a refusal.
BROKEN = (aiohttp.ClientError, TimeoutError, OSError)


class WrongRange(aiohttp.ClientPayloadError):
    """An answer that does not carry the range asked for: the lane is resumed."""


class Lanes:
    """Fetch one blob into ``target`` from ``feeds`` (in order of preference)."""

    def __init__(
        self,
        target: Target,
        feeds: Sequence[Feed],
        stats: FillStats,
        min_size: int,
        ranges: RangeSupport,
        key: str = "",
        backoff: float = RESUME_BACKOFF,
    ) -> None:
        self._target = target
        # Cluster mode: the peers holding the blob may send it too (the swarm the
        # first feed brings, the peer link's).
        first = feeds[0]
        self._swarm: Swarm | None = first.swarm if isinstance(first, Swarmed) else None
        # Seconds before the first resume, doubling for each next one.
        self._backoff = backoff
        self._feeds = list(feeds)
        # The feeds given; the swarm's are added after them as they are first asked.
        self._base = len(self._feeds)
        self._stats = stats
        self._min_size = max(1, min_size)
        self._ranges = ranges
        # Whose range support a wrong answer from an upstream feed is remembered under.
        self._key = key
        self._single = False
        self._eof = False
        self._chunk = self._min_size
        self._attempts = 0
        self._active: dict[asyncio.Task[None], Lane] = {}
        #: Bytes received from the upstream, and from the shared tier (the ledger's).
        self.received = 0
        self.received_shared = 0

    async def run(self) -> None:
        """Return once every byte of the blob is on disk; raise a RegistryError if not."""
        try:
            if not await self._join():
                await self._first()
            await self._drive()
        finally:
            tasks = list(self._active)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._swarm is not None:
                await self._swarm.close()

    def coming(self) -> list[Span]:
        """The spans on their way: asked for, and their answers came."""
        size = self._target.size
        return [lane.span(size) for lane in self._active.values() if lane.answered]

    def blame(self) -> None:
        """The blob failed verification: the swarm's rule says who answers for it when
        its peers sent some of it, else the feed does."""
        if self._swarm is None or not self._swarm.blame():
            self._feeds[0].blame()

    async def verified(self) -> None:
        """The blob is verified here: its swarm tells the owner (this node serves it)."""
        if self._swarm is not None:
            await self._swarm.finish(Progress(self._target.extents.spans()))

    def _progress(self) -> Progress:
        asked = [lane.span(self._target.size) for lane in self._active.values()]
        return Progress(self._target.extents.spans(), self.coming(), asked)

    async def _join(self) -> bool:
        """Join the swarm, if any; True when it gave the blob's size."""
        swarm = self._swarm
        if swarm is None:
            return False
        size = await swarm.start()
        if size is None:
            await swarm.close()
            self._swarm = None
            return False
        self._begin(size)
        return True

    def _begin(self, size: int | None) -> None:
        """The blob's size is known (if announced): how much each request asks for."""
        self._target.begin(size)
        if size is not None:
            lanes = sum(self.lanes(i) for i in range(self._base))
            self._chunk = chunk_size(size, lanes, self._min_size)

    def _lane_count(self) -> int:
        """The bodies read at once: those planned over the feeds given, or running."""
        return max(sum(self.lanes(i) for i in range(self._base)), len(self._active))

    def lanes(self, index: int) -> int:
        """How many ranges feed ``index`` carries at once now."""
        feed = self._feeds[index]
        if self._single or (feed.origin == "upstream" and self._ranges.ignored_by(self._key)):
            return 1
        return max(1, feed.lanes)

    async def _first(self) -> None:
        """Ask for the start of the blob; learn its length from the answer."""
        ask = self._min_size - 1 if self.lanes(0) > 1 else None
        try:
            resp = await self._open(0, 0, ask)
        except RangeNotSatisfiable:
            if ask is None:
                raise
            # An empty blob (the empty layer, sha256:e3b0...) has no byte 0 to range
            # over (RFC 9110 section 15.5.17): ask for it whole.
            ask = None
            resp = await self._open(0, 0, None)
        answer = self._check(resp, 0, ask)
        if answer.kind == "bad":
            resp.release()
            self._mishandled(0, "a wrong Content-Range")
            ask = None
            resp = await self._open(0, 0, None)
            answer = self._check(resp, 0, None)
            if answer.kind == "bad":
                resp.release()
                raise UpstreamBadContent("upstream answered a blob with the wrong range")
        if ask is not None and answer.kind == "whole":
            self._mishandled(0, "200 to a range")
        elif ask is not None and answer.total is None:
            self._mishandled(0, "no length")
        try:
            self._begin(answer.total)
        except BaseException:
            resp.release()
            raise
        self._spawn(Lane(0, 0, answer.end, answered=True), resp)

    async def _drive(self) -> None:
        while True:
            self._plan()
            swarm = self._swarm if self._swarm is not None and self._swarm.live else None
            if not self._active:
                if swarm is None or self._complete():
                    return
                # Nothing to ask now (every holder busy, or nobody has the rest yet).
                await asyncio.sleep(SWARM_TICK)
                continue
            # A swarm's plan changes without a lane ending (holders report, busy ones free).
            done, _ = await asyncio.wait(
                self._active,
                timeout=SWARM_TICK if swarm is not None else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                lane = self._active.pop(task)
                exc = task.exception()
                if isinstance(exc, CacheWriteFailed):
                    # This node's disk: never resumed, never a holder's fault.
                    raise exc
                if lane.feed >= self._base and self._swarm is not None:
                    self._swarm.ended(self._feeds[lane.feed], exc)
                    continue
                if exc is None:
                    continue
                if isinstance(exc, RegistryError) or not isinstance(exc, BROKEN):
                    raise exc
                self._resume(lane, exc)

    def _resume(self, lane: Lane, exc: BaseException) -> None:
        # RFC 9110 section 14: resume a broken body from where it broke.
        self._attempts += 1
        if self._attempts > RESUME_ATTEMPTS:
            raise UpstreamUnavailable("upstream broke off the blob") from exc
        why = type(exc).__name__
        log.info("body of %s broke at %d (%s), resuming", self._target.digest, lane.pos, why)
        self._stats.count_resumed()
        self._spawn(lane, delay=self._backoff * 2 ** (self._attempts - 1))

    def _plan(self) -> None:
        """Give every free lane its next range."""
        size = self._target.size
        if size is None:
            # One stream of unknown length: go on from where the last answer ended.
            if not self._active and not self._eof:
                pos = self._target.extents.prefix
                self._spawn(Lane(0, pos, None))
            return
        swarm = self._swarm
        if swarm is not None and swarm.live:
            for source, span in swarm.plan(size, self._progress()):
                self._spawn(Lane(self._index(source), span.start, span.end))
            if swarm.sole:
                return
        busy = [0] * self._base
        taken = self._target.extents.spans()
        pending = 0
        for lane in self._active.values():
            if lane.feed < self._base:
                busy[lane.feed] += 1
            end = size if lane.end is None else lane.end
            taken.append(Span(lane.pos, end))
            pending += end - lane.pos
        free = [max(0, self.lanes(i) - busy[i]) for i in range(self._base)]
        if not any(free):
            return
        lanes = sum(self.lanes(i) for i in range(self._base))
        for feed, span in plan(
            size,
            taken,
            free,
            chunk=self._chunk,
            min_size=self._min_size,
            lanes=lanes,
            pending=pending,
            hints=self._target.hints(),
        ):
            self._stats.count_segment()
            self._spawn(Lane(feed, span.start, span.end))

    def _index(self, feed: Feed) -> int:
        """The index of a swarm's feed among the lanes' feeds (added when new)."""
        for i in range(self._base, len(self._feeds)):
            if self._feeds[i] is feed:
                return i
        self._feeds.append(feed)
        return len(self._feeds) - 1

    def _complete(self) -> bool:
        size = self._target.size
        return size is not None and self._target.extents.prefix >= size

    def _spawn(
        self, lane: Lane, resp: aiohttp.ClientResponse | None = None, delay: float = 0.0
    ) -> None:
        task = asyncio.create_task(self._lane(lane, resp, delay), name="lane")
        self._active[task] = lane

    async def _lane(self, lane: Lane, resp: aiohttp.ClientResponse | None, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        skip = 0
        if resp is None:
            size = self._target.size
            peer = lane.feed >= self._base
            # To the end: an open range, as a resume has always asked (a peer of the
            # swarm is asked for exactly its piece).
            ask = None if lane.end is None or (lane.end == size and not peer) else lane.end - 1
            resp = await self._open(lane.feed, lane.pos, ask)
            answer = self._check(resp, lane.pos, ask)
            lane.answered = answer.kind != "bad"
            if peer and answer.kind != "range":
                # One holder's wrong answer says nothing of the others: it alone is left.
                resp.release()
                raise WrongRange(f"holder answered bytes={lane.pos}-{ask} with another range")
            if answer.kind == "bad":
                resp.release()
                self._mishandled(lane.feed, "a wrong Content-Range")
                raise WrongRange(f"answer to bytes={lane.pos}- carries another range")
            if answer.kind == "whole":
                # The whole blob from byte 0: skip to this lane's part.
                skip = lane.pos
                if lane.pos or ask is not None:
                    self._mishandled(lane.feed, "200 to a range")
        try:
            paced = self._target.paced_by(self._feeds[lane.feed].origin)
            body = BodyReader(resp, window_for(paced, self._lane_count()))
            try:
                await self._land(lane, resp, body, skip)
            finally:
                body.close()
        finally:
            resp.release()

    async def _land(
        self, lane: Lane, resp: aiohttp.ClientResponse, body: BodyReader, skip: int
    ) -> None:
        origin = self._feeds[lane.feed].origin
        # Under a bandwidth limit: a body read slower is sent slower (TCP's window),
        # so the limit holds at the sender too.
        pacer = Pacer(lambda: self._target.paced_by(origin), MAX_CHUNK)
        got = 0
        try:
            while lane.end is None or lane.pos < lane.end:
                parts = await body.next(await pacer.ahead())
                size = sum(len(p) for p in parts)
                await pacer.settle(size)
                if not parts:
                    break
                got += size
                self._stats.count_bytes(origin, size)
                if skip:
                    cut = min(skip, size)
                    parts, skip, size = drop(parts, cut), skip - cut, size - cut
                    if not size:
                        continue
                over = lane.end is not None and lane.pos + size > lane.end
                if lane.end is not None and over:
                    # Longer than asked (or announced): keep what was asked, drop the
                    # rest with the connection.
                    size = lane.end - lane.pos
                    parts = keep(parts, size)
                await self._target.write_at(lane.pos, parts)
                lane.pos += size
                if over:
                    resp.close()
                    break
        finally:
            # The ledger charges upstream and bucket bytes (a peer's are the cluster's).
            if origin == "shared":
                self.received_shared += got
            elif origin != "peer":
                self.received += got
        if lane.end is None:
            self._eof = True
        elif lane.pos < lane.end:
            raise aiohttp.ClientPayloadError("body ended early")

    async def _open(self, index: int, start: int, end: int | None) -> aiohttp.ClientResponse:
        feed = self._feeds[index]
        resp = await feed.open(start, end)
        self._stats.count_get(feed.origin)
        return resp

    def _check(self, resp: aiohttp.ClientResponse, start: int, end: int | None) -> Answer:
        return read_answer(
            resp.status,
            resp.headers.get("Content-Range"),
            resp.content_length,
            start,
            end,
            self._target.size,
        )

    def _mishandled(self, index: int, how: str) -> None:
        """A feed answered a range wrongly: one stream from now on (remembered)."""
        if not self._single:
            self._single = True
            self._stats.count_single_stream()
            log.info("%s: %s; one stream", self._target.digest, how)
        if self._feeds[index].origin == "upstream":
            self._ranges.remember(self._key)
