"""One fill's side of its blob's swarm, the side that asks: pieces from several peers at once.

A node that needs a blob it does not own joins the blob's swarm (cluster mode with
``peer_holders``): it tells the owner how far it got and learns the holders the
owner names (``GET /_cacheproxy/peer/holding/<digest>``, signed both ways), then
asks up to ``MAX_SOURCES`` of them at once for pieces (``GET .../pieces/<digest>``
with a Range), as the swarm policy plans (``policy.py``: rarest first, one
request per holder). A holder sends what it has or is receiving, never fetching
anything for it. The node reports again every :data:`REFRESH` seconds while it
fills (sooner when the plan runs dry) and once more when the blob is verified. The
fill's lanes (``blobs/lanes.py``) move the bytes and tell it where they stand with
each plan they ask of it (what the owner is told); this module only decides.

Failure and trust:

- "busy" (a holder at its upload bound): that holder is left alone for
  ``memory.BUSY_PAUSE`` seconds and others are asked; it is not a failure.
- a piece that fails (the holder is gone, its body breaks, nothing arrives within
  the peer read timeout, it no longer holds the blob, a wrong range): that holder
  is left alone for the rest of the fill and what did not land is planned again,
  from another holder or the owner.
- the owner gone (its holder list cannot be had, or no byte lands within the peer
  read timeout): holders still send what they have, and the rest comes from the
  fill's own feed, as without a swarm: the owner, the next in rank, the upstream.
- more than :data:`MAX_FAILURES` failed pieces: the swarm gives up; the feed alone.
- wrong bytes: a piece cannot be checked on its own (an OCI blob has one digest,
  no per-piece ones), and with several holders the one that sent the wrong bytes
  is unknown. The rule: the fill fails as any fill does (nothing kept, readers
  abort), every holder that sent some of it is left out of this node's swarms for
  ``memory.SUSPECT_SECONDS``, and this node's next fill of that digest comes from the
  owner alone (the path without a swarm; a mismatch there blames the owner as it
  always has). A wrong byte costs a refetch, never a wrong blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

import aiohttp

from ..blobs.segments import Span
from ..blobs.source import Feed, Progress, Want
from ..errors import BlobUnknown, RegistryError, UpstreamUnavailable
from ..peers.cluster import Cluster
from . import policy
from .feed import Busy, HolderFeed, NotHeld
from .lists import (
    MAX_ANSWER,
    HolderReport,
    Spans,
    ahead,
    encode_spans,
    holder_of,
    merge,
    read_list,
    whole_pieces,
)
from .memory import SwarmMemory

log = logging.getLogger(__name__)

#: Seconds between reports to the owner while filling.
REFRESH = 0.25
#: Seconds at least between two reports (the plan running dry asks for one sooner).
EAGER = 0.05
#: Seconds a holder that did not have what it reported is not asked.
NOT_HELD_PAUSE = 0.5
#: Seconds a holder whose piece failed is not asked again by this fill.
FAILED_PAUSE = 60.0
#: Peer read timeouts without a byte landing before the owner is taken for gone.
STALLED = 3
#: Failed pieces one fill tolerates before it leaves the swarm.
MAX_FAILURES = 16

# What a failed holder list looks like.
REPORT_ERRORS = (RegistryError, aiohttp.ClientError, TimeoutError, OSError, ValueError)


class Asker:
    """One fill's swarm (``blobs.source.Swarm``): the holders the owner names, and the
    pieces asked of them. ``memory``: what every swarm of this node shares."""

    def __init__(
        self,
        cluster: Cluster,
        memory: SwarmMemory,
        want: Want,
        owner: str,
        *,
        piece_size: int = policy.PIECE_SIZE,
        max_sources: int = policy.MAX_SOURCES,
    ) -> None:
        self._cluster = cluster
        self._memory = memory
        self._want = want
        self._owner = owner
        self._piece_size = piece_size
        self._max_sources = max_sources
        self._digest = str(want.digest)
        self._clock = memory.clock
        self.live = True
        self.sole = True
        # Where the lanes stood at their last plan: what the owner is told.
        self._progress = Progress()
        self._size: int | None = None
        self._reports: list[tuple[str, str, str]] = []
        # Each holder's report as the plan sees it, by what it said (most say the
        # same from one list to the next).
        self._seen: dict[tuple[str, str, str, bool], policy.Holder] = {}
        self._holders: tuple[policy.Holder, ...] | None = None
        self._feeds: dict[str, HolderFeed] = {}
        self._asked: dict[str, policy.Request] = {}
        # Ranges asked of holders that were themselves still receiving them: not
        # reported as coming (see _coming).
        self._tails: dict[str, policy.Request] = {}
        self._avoid: dict[str, float] = {}
        self._sent: set[str] = set()
        self._failures = 0
        self._landed = 0
        self._landed_at = self._clock()
        # Whether the plan may differ from the last (a list came, a lane ended), and
        # when a holder left alone may be asked again.
        self._changed = True
        self._retry_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- joining and reporting --------------------------------------------------------

    async def start(self) -> int | None:
        try:
            size = await self._report()
        except REPORT_ERRORS as exc:
            log.info("no swarm for %s (owner %s): %s", self._digest, self._owner, _why(exc))
            size = None
        if size is None:
            self.live = self.sole = False
            return None
        self._landed_at = self._clock()
        self._task = asyncio.create_task(self._refresh(), name=f"swarm {self._digest}")
        return size

    async def _report(self) -> int | None:
        """Tell the owner how far this fill got; take the holders it names."""
        query = {
            "upstream": self._want.upstream.name,
            "repo": self._want.repo,
            "node": self._cluster.self_url,
            "have": encode_spans(self._progress.have),
            "coming": encode_spans(self._coming()),
        }
        if self._size is not None:
            query["size"] = str(self._size)
        self._cluster.stats.count_holder_list()
        # On the blob connections: a holder list may wait for the owner's fetch to
        # begin, and a manifest never waits behind it.
        resp = await self._cluster.get(
            self._owner, f"/holding/{self._digest}", query, {}, blob=True
        )
        try:
            if resp.status == 404:
                raise BlobUnknown(f"the owner answered 404 for {self._digest}")
            if resp.status != 200:
                raise UpstreamUnavailable(f"the owner answered {resp.status}")
            length = resp.content_length
            if length is None or length > MAX_ANSWER:
                raise UpstreamUnavailable("a holder list without a length, or too long")
            body = await resp.content.readexactly(length)
            digest = hashlib.sha256(body).hexdigest()
            # Not addressed by a digest: trusted only with the owner's signature.
            if not self._cluster.signed_answer(resp, [self._digest, digest]):
                raise UpstreamUnavailable("a holder list without the owner's signature")
            size, reports = read_list(body)
        finally:
            resp.release()
        self._reports = reports
        self._holders = None
        self._size = size
        self._changed = True
        return size

    def _coming(self) -> Spans:
        """What is on its way here and may be offered: what comes from the owner, or
        from a holder that had it whole. A range tailed from a holder still receiving
        it is offered once it landed: so tails are at most two deep, and two nodes
        never tail each other for the same bytes (a cycle would wait for nothing)."""
        tails = list(self._tails.values())
        coming = self._progress.coming
        offered = (s for s in coming if not any(t.start <= s.start < t.end for t in tails))
        return ahead(offered, self._piece_size)

    async def _refresh(self) -> None:
        while self.sole:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._report()
            except REPORT_ERRORS as exc:
                self._lose_owner(f"its holder list failed: {_why(exc)}")
                return
            await asyncio.sleep(EAGER)

    async def finish(self, progress: Progress) -> None:
        self._progress = progress
        if not self.sole:
            return
        try:
            async with asyncio.timeout(self._cluster.read_timeout):
                await self._report()
        except REPORT_ERRORS as exc:
            log.info("telling %s that %s is here failed: %s", self._owner, self._digest, exc)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- planning ---------------------------------------------------------------------

    def plan(self, size: int, progress: Progress) -> list[tuple[Feed, Span]]:
        self._progress = progress
        if not self.live:
            return []
        memory = self._memory
        now = self._clock()
        # Nothing to decide: every source taken, or nothing changed since the last look.
        if len(self._asked) >= self._max_sources or (not self._changed and now < self._retry_at):
            return []
        self._changed = False
        have = merge(progress.have)
        taken = merge((*have, *progress.asked))
        self._watch(sum(len(s) for s in have), now)
        if not self.live:
            return []
        pauses = {**self._avoid, **memory.busy}
        avoid = {n for n, until in pauses.items() if until > now}
        self._retry_at = min((pauses[n] for n in avoid), default=float("inf"))
        asking = policy.Asking(
            me=self._cluster.self_url,
            size=size,
            holders=self._current(size),
            have=whole_pieces(taken, size, self._piece_size),
            in_flight=tuple(self._asked.values()),
            avoid=frozenset(avoid) | memory.suspects.current(),
            max_sources=self._max_sources,
            piece_size=self._piece_size,
        )
        out: list[tuple[Feed, Span]] = []
        whole = {h.node: h.have for h in asking.holders}
        for request in policy.plan(asking):
            gap = _first_gap(taken, request.start, request.end)
            if not len(gap):
                continue
            asked = policy.Request(request.node, request.piece, gap.start, gap.end)
            self._asked[request.node] = asked
            if request.node != self._owner and request.piece not in whole[request.node]:
                self._tails[request.node] = asked
            out.append((self._feed(request.node), gap))
        if not out and len(self._asked) < self._max_sources:
            self._wake.set()  # nothing to ask: hear from the owner sooner
        return out

    def _current(self, size: int) -> tuple[policy.Holder, ...]:
        """The holders as the plan sees them: healthy members only; once the owner is
        gone, only what each has (what was coming may have been coming from it)."""
        healthy = set(self._cluster.membership.peers())
        if self.sole and self._owner not in healthy:
            # Left the cluster, or avoided: what it would send, the feed sends.
            self._lose_owner("it is no healthy member now")
        if self._holders is None:
            seen, self._seen = self._seen, {}
            holders = []
            for node, have, coming in self._reports:
                if not self.sole and node == self._owner:
                    continue
                key = (node, have, coming, self.sole)
                holder = seen.get(key)
                if holder is None:
                    holder = self._holder(node, have, coming, size)
                if holder is not None:
                    holders.append(holder)
                    self._seen[key] = holder
            self._holders = tuple(holders)
        return tuple(h for h in self._holders if h.node in healthy)

    def _watch(self, landed: int, now: float) -> None:
        """No byte landing for a long while (several peer read timeouts: longer than
        any wait for a busy holder) while the owner answers: leave it to the feed."""
        if landed > self._landed:
            self._landed, self._landed_at = landed, now
        elif self.sole and now - self._landed_at > STALLED * self._cluster.read_timeout:
            self._lose_owner("no byte landed for a long while")

    def _holder(self, node: str, have: str, coming: str, size: int) -> policy.Holder | None:
        try:
            report = HolderReport.parse(node, have, coming, size)
        except ValueError as exc:
            log.info("holder %s of %s: a malformed report: %s", node, self._digest, exc)
            return None
        on_way = report.coming if self.sole else ()
        return holder_of(node, report.have, on_way, size, self._piece_size)

    def _feed(self, node: str) -> HolderFeed:
        feed = self._feeds.get(node)
        if feed is None:
            feed = self._feeds[node] = HolderFeed(self._cluster, node, self._want)
        return feed

    # --- outcomes ---------------------------------------------------------------------

    def ended(self, feed: Feed, error: BaseException | None) -> bool:
        if not isinstance(feed, HolderFeed) or self._feeds.get(feed.node) is not feed:
            return False
        node = feed.node
        self._asked.pop(node, None)
        self._tails.pop(node, None)
        self._changed = True
        if error is None:
            self._sent.add(node)
            self._memory.admitted(node)
            return True
        if isinstance(error, Busy):
            self._cluster.stats.count_busy()
            self._memory.refused(node)
            return True
        if isinstance(error, NotHeld):
            # What it reported coming did not come after all (its own lane was refused):
            # a fresher report will say what it has.
            self._avoid[node] = self._clock() + NOT_HELD_PAUSE
            self._wake.set()
            return True
        self._sent.add(node)  # some of its bytes may have landed
        self._cluster.stats.count_piece_failure()
        self._failures += 1
        self._avoid[node] = self._clock() + FAILED_PAUSE
        log.info("a piece of %s from %s failed: %s", self._digest, node, _why(error))
        if node == self._owner and node not in self._cluster.membership.peers():
            self._lose_owner("it is unreachable")
        if self._failures > MAX_FAILURES:
            self._give_up(f"{self._failures} pieces failed")
        self._wake.set()
        return True

    def blame(self) -> bool:
        if not self._sent:
            return False
        self._cluster.stats.count_swarm_mismatch()
        log.warning(
            "%s from %s failed verification: they sit out, the owner sends it next",
            self._digest,
            ", ".join(sorted(self._sent)),
        )
        self._memory.failed(self._digest, self._sent - {self._owner})
        return True

    def _lose_owner(self, why: str) -> None:
        if not self.sole:
            return
        self.sole = False
        self._holders = None
        self._changed = True
        self._cluster.stats.count_swarm_fallback()
        log.info("owner %s of %s: %s; the rest from the feed", self._owner, self._digest, why)
        self._wake.set()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _give_up(self, why: str) -> None:
        self._lose_owner(why)
        self.live = False


def _first_gap(taken: Spans, start: int, end: int) -> Span:
    """The first bytes of ``start..end`` (exclusive) that ``taken`` lacks (empty: none)."""
    pos = start
    for span in taken:
        if span.end <= pos:
            continue
        if span.start > pos:
            return Span(pos, min(span.start, end))
        pos = span.end
        if pos >= end:
            break
    return Span(pos, max(pos, end))


def _why(exc: BaseException) -> str:
    return exc.message if isinstance(exc, RegistryError) else (str(exc) or type(exc).__name__)
