"""This node's side of the swarm that answers: as a digest's owner, and as a holder.

As the owner it keeps each digest's holders (``lists.py``: the latest
report of every node that has the blob or is filling it) and answers a report with
the holders it names to that node, itself first with its own progress. The owner
stays the only node that fetches the blob from outside the cluster: a report from a
node still filling a blob the owner neither holds nor is bringing in makes it bring
the blob in, through its chain for peers (the links rule first, then its own cache,
its fill, the shared tier, the upstream).

As a holder it serves a range of a blob it has complete, or is filling, as the
bytes land (a peer verifies the whole blob itself), and only that: a range whose
first byte is neither on disk nor on its way is refused at once, and no fetch ever
starts for it. At most ``policy.UPLOAD_SLOTS`` ranges go out at once; beyond that
the answer is "busy" (:class:`Uploads`), so the asker turns to another holder
and the fan-out of a blob becomes a tree rather than a star.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterator

from ..blobs.fill import Fill
from ..blobs.fillstate import FillState
from ..blobs.inflight import Fills
from ..blobs.segments import Span
from ..blobs.service import BlobService
from ..blobs.source import Want
from ..errors import UpstreamUnavailable
from ..links import Links
from ..store.files import BlobStore
from . import policy
from .lists import HolderLists, HolderReport, ahead, list_key, merge, named_to

#: Seconds this node's own progress on a blob is reused for the answers it gives,
#: and the blobs it is kept for at most.
OWN_FOR = 0.05
OWN_CACHED = 256
#: A range this small is always admitted: it takes milliseconds, and a refusal
#: would cost the asker a round trip more than the range itself. (A quarter of
#: the piece size when that is less: whole pieces always take a slot.)
SMALL_RANGE = 1 << 20


class Holdings:
    """The holder lists this node keeps as owner, and its own progress on a blob."""

    def __init__(
        self,
        node: str,
        fills: Fills,
        store: BlobStore,
        bring: BlobService,
        links: Links,
        piece_size: int = policy.PIECE_SIZE,
        lists: HolderLists | None = None,
        uploads: Uploads | None = None,
    ) -> None:
        self.node = node
        self.piece_size = piece_size
        self._fills = fills
        self._store = store
        # The chain that answers peers: how the owner brings a blob in.
        self._bring = bring
        self._links = links
        self.lists = lists or HolderLists()
        self.uploads = uploads or Uploads(small=piece_size // 4)
        # What this node sends now, by digest: (to whom, which bytes).
        self._sending: dict[str, list[tuple[str, Span]]] = {}
        # This node's own report per digest, for a moment (many askers ask at once).
        self._own: OrderedDict[str, tuple[Fill, float, HolderReport]] = OrderedDict()

    def own(self, want: Want) -> tuple[int | None, HolderReport] | None:
        """This node's size and progress for ``want``; None when it has nothing."""
        size = self._store.size(want.digest)
        if size is not None:
            return size, HolderReport(self.node, (Span(0, size),))
        fill = self._fills.running(want)
        if fill is None or fill.state is FillState.FAILED:
            return None
        key = str(want.digest)
        now = time.monotonic()
        cached = self._own.get(key)
        if cached is not None and cached[0] is fill and now - cached[1] < OWN_FOR:
            return fill.size, cached[2]
        have = merge(fill.extents.spans())
        # What each lane brings next: a piece of the askers' size or so.
        coming = ahead(fill.coming(), self.piece_size)
        report = HolderReport(self.node, have, coming)
        report = HolderReport(self.node, have, coming, report.texts())
        self._own[key] = (fill, now, report)
        self._own.move_to_end(key)
        while len(self._own) > OWN_CACHED:
            self._own.popitem(last=False)
        return fill.size, report

    def asked(self, want: Want) -> None:
        """A peer asked for ``want`` (a holder list, a piece): a fill of it here keeps
        its slot for the gate's grace from now, as if a reader had just left."""
        self._fills.named(want)

    def offers(self, want: Want, start: int) -> bool:
        """Whether byte ``start`` of the blob is here or on its way."""
        if self._store.exists(want.digest):
            return True
        fill = self._fills.running(want)
        return fill is not None and fill.offers(start)

    async def holding(
        self, want: Want, report: HolderReport, size: int | None
    ) -> tuple[int | None, list[HolderReport]]:
        """Take ``report`` (its node's progress; ``size``: the blob's, if it knows it);
        the blob's size and the holders named to that node, this node first."""
        # A holder list tells the blob's size and who has it: only under the pair's
        # rule, as the blob itself (BLOB_UNKNOWN otherwise, before anything is kept).
        confirmed = await self.vouch(want)
        own = self.own(want)
        if (own is None or own[0] is None) and not report.complete(size):
            # A node is filling the blob: its owner brings it in (once per cluster), or
            # waits for its own fill's first answer (the size). That fetch asks the
            # upstream under the pair: its answer is the rule.
            async with self._bring.open(want) as body:
                await body.size()
            own = self.own(want)
            if own is None:
                raise UpstreamUnavailable("the blob is not coming in on its owner")
        elif not confirmed and (own is None or own[0] is None):
            # Nothing fetched under the pair, nothing held: the upstream confirms it.
            await self._links.vouch(want.upstream, want.repo, want.digest, "blob", True)
        # Only a node the pair's rule let through is named to others; its fill here
        # (read piece by piece, nobody reading it in between) keeps its slot.
        self.asked(want)
        key = list_key(want.upstream.name, str(want.digest))
        self.lists.report(key, report)
        known, mine = own if own is not None else (size, HolderReport(self.node))
        named = named_to(self.lists.reports(key), report.node, mine)
        return known, [self._with_sending(str(want.digest), r) for r in named]

    async def vouch(self, want: Want) -> bool:
        """The links rule for the pair, as ``Vouched`` applies it to a body: a digest
        held here (or coming in under another pair) is confirmed under this one.
        False: not linked and not held (a fetch under the pair must answer for it)."""
        up, repo, digest = want.upstream, want.repo, want.digest
        confirmed = await self._links.vouch(up, repo, digest, "blob", self._held(want))
        if not confirmed and self._held(want):
            # Brought in while the pair was looked up.
            await self._links.vouch(up, repo, digest, "blob", True)
            return True
        return confirmed

    def _held(self, want: Want) -> bool:
        # A fill under the same pair is the fetch that vouches for it: not "held".
        return self._store.exists(want.digest) or self._fills.held_elsewhere(want)

    @contextlib.contextmanager
    def sending(self, want: Want, node: str, start: int, end: int) -> Iterator[None]:
        """This node sends bytes ``start..end`` (exclusive) of ``want`` to ``node``: as
        the owner it names them as coming there at once, before that node says so."""
        key = str(want.digest)
        entry = (node, Span(start, end))
        self._sending.setdefault(key, []).append(entry)
        try:
            yield
        finally:
            entries = self._sending[key]
            entries.remove(entry)
            if not entries:
                del self._sending[key]

    def _with_sending(self, digest: str, report: HolderReport) -> HolderReport:
        extra = [span for n, span in self._sending.get(digest, ()) if n == report.node]
        if not extra:
            return report
        return HolderReport(report.node, report.have, merge((*report.coming, *extra)))


class Uploads:
    """Ranges this node is sending to peers now, bounded by ``policy.admit``."""

    def __init__(self, slots: int | None = policy.UPLOAD_SLOTS, small: int = SMALL_RANGE) -> None:
        self.slots = slots
        self.small = min(small, SMALL_RANGE)
        self.serving = 0
        #: Ranges refused with "busy", and ranges admitted (for /metrics).
        self.refused = 0
        self.admitted = 0

    def take(self, length: int) -> bool:
        """Take a slot for a range of ``length`` bytes, or refuse (False). A small
        range takes none (see :data:`SMALL_RANGE`)."""
        if length <= self.small:
            return True
        if not policy.admit(self.serving, self.slots):
            self.refused += 1
            return False
        self.serving += 1
        self.admitted += 1
        return True

    def give(self, length: int) -> None:
        """The range of ``length`` bytes that :meth:`take` admitted has ended."""
        if length > self.small:
            self.serving -= 1
