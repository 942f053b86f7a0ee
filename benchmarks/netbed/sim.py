"""A discrete-event, fluid model of a cluster rollout: the namespace bed past this machine.

The same link model as the bed: every node has an uplink and a downlink of one
capacity, the upstream an egress capacity, and the flows on a link share it fairly
(max-min fairness, computed by progressive filling). The same policy as the nodes:
:mod:`cacheproxy.swarm.policy` (``plan``, ``admit``, ``listed``) decides which node
asks whom for which bytes; this module only moves the bytes.

Policies modelled:

- ``owner-only``: cluster mode with ``peer_holders = false`` (the star). The owner of
  each blob (rendezvous hashing, ``cacheproxy.peers.ring``) fetches it from the
  upstream; every other node streams the whole blob from the owner, tailing the
  owner's fill (``pieces.owner_only``).
- ``holders``: cluster mode (the default): the owner fetches it; every node takes
  pieces from up to ``max_sources`` holders, each uploading to at most ``slots``.
- ``no-peers``: every node fetches every blob from the upstream itself.

Assumptions (written next to every result): see :data:`ASSUMPTIONS`."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from cacheproxy.peers.ring import ranked
from cacheproxy.swarm import policy as pieces

from .fair import max_min

UPSTREAM = -1

ASSUMPTIONS = """\
- Links: every node has an uplink and a downlink of the same capacity; the upstream's
  egress has its own capacity; nothing else limits a flow (no CPU, disk or switch
  limit, no latency: a request starts moving bytes the moment it is admitted).
- Flows on a link share it max-min fairly (what TCP on equal round trips approaches).
  The capacity is the payload rate: the link rate times `efficiency` (TCP/IP and
  Ethernet headers; 0.956 for 1448 bytes of payload per 1514-byte frame).
- A node serves a piece it is still receiving (tailing its file), never faster than
  it receives it. The owner's upstream fetch is one stream, in order.
- Holder lists are current: a holder's progress reaches the owner, and the owner's
  list reaches an asker, without delay. A refused ("busy") asker asks again after
  `retry` seconds, or when one of its own transfers ends.
- Every client starts at once, asks for the image's blobs three at a time in
  manifest order (config first), and is done when its node holds every blob; a fixed
  `overhead` (process start, manifest, connection set-up) is added to every client.
- Time advances from event to event (a piece ends, a retry is due), in steps of at
  least `step` seconds, so a transfer may end up to one step late.
"""


@dataclass(frozen=True)
class Setup:
    """One modelled rollout."""

    nodes: int
    blobs: tuple[int, ...]
    #: Payload bytes/s of each node's uplink and downlink.
    node_rate: float
    #: Payload bytes/s of the upstream's egress.
    upstream_rate: float
    policy: str = "holders"
    piece_size: int = pieces.PIECE_SIZE
    max_sources: int = pieces.MAX_SOURCES
    slots: int | None = pieces.UPLOAD_SLOTS
    listed: int = pieces.HOLDERS_LISTED
    #: Blobs a client fetches at once (containerd's and docker's default).
    parallel: int = 3
    overhead: float = 0.0
    retry: float = 0.05
    step: float = 0.005
    #: Member names and blob keys (URLs, digests) that decide the owners, as in the
    #: bed; synthetic ones when empty.
    members: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    #: ``no-peers``: times each node fetches each blob (distribution's proxy: 2).
    copies: int = 1


@dataclass
class Outcome:
    """What the modelled rollout did."""

    wall: float
    upstream_bytes: float
    uploads: list[float]
    finish: list[float]
    events: int

    @property
    def busiest_upload(self) -> float:
        return max(self.uploads, default=0.0)


@dataclass(eq=False)
class _Flow:
    src: int
    dst: int
    blob: int
    piece: int
    start: int
    length: int
    delivered: float = 0.0
    rate: float = 0.0


@dataclass(eq=False)
class _Fill:
    """One node's copy of one blob."""

    size: int
    count: int
    have: set[int] = field(default_factory=set)
    flows: list[_Flow] = field(default_factory=list)
    avoid: dict[int, float] = field(default_factory=dict)
    done_at: float | None = None
    upstream: _Flow | None = None
    version: int = 0
    frozen: tuple[int, pieces.Holder] | None = None


class Model:
    """The state of one rollout and the loop that advances it."""

    def __init__(self, setup: Setup) -> None:
        self.s = setup
        n = setup.nodes
        self.names = list(setup.members[:n]) or [f"node{i}" for i in range(n)]
        self.index = {name: i for i, name in enumerate(self.names)}
        keys = setup.keys or tuple(f"blob{j}" for j in range(len(setup.blobs)))
        self.owner = [self.index[ranked(key, self.names)[0]] for key in keys]
        self.piece = [self._piece_size(size) for size in setup.blobs]
        self.fills: list[dict[int, _Fill]] = [{} for _ in range(n)]
        self.serving = [0] * n
        self.uploads = [0.0] * n
        self.upstream_bytes = 0.0
        self.flows: list[_Flow] = []
        self.now = 0.0
        self.next_blob = [0] * n
        self.finish = [math.inf] * n
        self.retries: list[tuple[float, int, int]] = []
        self.order: dict[int, list[int]] = {}
        self.events = 0

    def _piece_size(self, size: int) -> int:
        if self.s.policy == "holders":
            return self.s.piece_size
        return max(size, 1)

    # --- the policy's inputs ---------------------------------------------------------

    def holder(self, node: int, blob: int) -> pieces.Holder:
        fill = self.fills[node][blob]
        if fill.upstream is not None:
            # The upstream stream fills pieces in order: those behind it are done.
            below = int(fill.upstream.delivered) // self.piece[blob]
            if len(fill.have) < below:
                fill.have.update(range(below))
                fill.version += 1
        if fill.frozen is not None and fill.frozen[0] == fill.version:
            return fill.frozen[1]
        coming = {f.piece for f in fill.flows}
        if fill.upstream is not None and len(fill.have) < fill.count:
            coming.add(len(fill.have))
        made = pieces.Holder(self.names[node], frozenset(fill.have), frozenset(coming - fill.have))
        fill.frozen = (fill.version, made)
        return made

    def listed(self, node: int, blob: int) -> tuple[pieces.Holder, ...]:
        owner = self.owner[blob]
        if self.s.policy != "holders":
            return (self.holder(owner, blob),)
        # listed() ranks by (asker, holder) alone: rank everyone once, keep the holders.
        order = self.order.get(node)
        if order is None:
            everyone = [pieces.Holder(name) for name in self.names]
            ranked_all = pieces.listed(everyone, self.names[node], self.names[owner], len(everyone))
            order = [self.index[h.node] for h in ranked_all[1:]]
            self.order[node] = order
        out = [self.holder(owner, blob)]
        for other in order:
            if len(out) >= self.s.listed:
                break
            if other != owner and blob in self.fills[other]:
                out.append(self.holder(other, blob))
        return tuple(out)

    # --- starting fills and transfers ------------------------------------------------

    def want(self, node: int, blob: int) -> None:
        """``node``'s client asks it for ``blob``."""
        size = self.s.blobs[blob]
        fill = _Fill(size, pieces.piece_count(size, self.piece[blob]))
        self.fills[node][blob] = fill
        owner = self.owner[blob]
        if self.s.policy == "no-peers" or node == owner:
            self._from_upstream(node, blob)
            return
        if blob not in self.fills[owner]:
            self.want_as_owner(owner, blob)
        self.ask(node, blob)

    def want_as_owner(self, owner: int, blob: int) -> None:
        size = self.s.blobs[blob]
        self.fills[owner][blob] = _Fill(size, pieces.piece_count(size, self.piece[blob]))
        self._from_upstream(owner, blob)

    def _from_upstream(self, node: int, blob: int) -> None:
        fill = self.fills[node][blob]
        copies = self.s.copies if self.s.policy == "no-peers" else 1
        flow = _Flow(UPSTREAM, node, blob, -1, 0, fill.size * copies)
        fill.upstream = flow
        self.flows.append(flow)
        self.upstream_bytes += flow.length
        if fill.size == 0:
            self._complete(flow)

    def ask(self, node: int, blob: int) -> None:
        """Plan and send ``node``'s next requests for ``blob`` (busy holders skipped)."""
        fill = self.fills[node][blob]
        if fill.done_at is not None:
            return
        while True:
            avoid = frozenset(self.names[k] for k, t in fill.avoid.items() if t > self.now)
            in_flight = tuple(
                pieces.Request(self.names[f.src], f.piece, f.start, f.start + f.length)
                for f in fill.flows
            )
            holders = self.listed(node, blob)
            if self.s.policy == "holders":
                asking = pieces.Asking(
                    me=self.names[node],
                    size=fill.size,
                    holders=holders,
                    have=frozenset(fill.have),
                    in_flight=in_flight,
                    avoid=avoid,
                    max_sources=self.s.max_sources,
                    piece_size=self.piece[blob],
                )
                slots = self.s.slots
            else:
                asking = pieces.owner_only(self.names[node], holders[0], fill.size, in_flight)
                slots = None
            requests = pieces.plan(asking)
            refused = False
            for req in requests:
                src = self.index[req.node]
                if not pieces.admit(self.serving[src], slots):
                    fill.avoid[src] = self.now + self.s.retry
                    refused = True
                    continue
                self._transfer(src, node, blob, req)
            if not refused:
                break
        if len(fill.flows) < asking.max_sources and len(fill.have) + len(fill.flows) < fill.count:
            heapq.heappush(self.retries, (self.now + self.s.retry, node, blob))

    def _transfer(self, src: int, dst: int, blob: int, req: pieces.Request) -> None:
        flow = _Flow(src, dst, blob, req.piece, req.start, req.end - req.start)
        self.serving[src] += 1
        fill = self.fills[dst][blob]
        fill.flows.append(flow)
        fill.version += 1
        self.flows.append(flow)

    # --- moving bytes ----------------------------------------------------------------

    def feeder(self, flow: _Flow) -> _Flow | None:
        """The flow bringing ``flow``'s bytes to its source, when they are still coming."""
        if flow.src == UPSTREAM:
            return None
        fill = self.fills[flow.src][flow.blob]
        if flow.piece in fill.have:
            return None
        if fill.upstream is not None and fill.done_at is None:
            return fill.upstream
        return next((f for f in fill.flows if f.piece == flow.piece), None)

    def source_progress(self, flow: _Flow) -> float:
        """How many bytes of ``flow``'s range its source holds now (inf: all)."""
        feeder = self.feeder(flow)
        if feeder is None:
            # The source has the piece, or (a holder that lost it) will never: 0 below.
            has = flow.src == UPSTREAM or flow.piece in self.fills[flow.src][flow.blob].have
            return math.inf if has else 0.0
        if feeder.src == UPSTREAM and feeder.piece == -1:
            return max(0.0, feeder.delivered - flow.start)
        return feeder.delivered

    def allocate(self) -> None:
        """Max-min fair rates by progressive filling over every link."""
        n = self.s.nodes
        capacity: list[float] = [self.s.node_rate] * (2 * n) + [self.s.upstream_rate]
        links: list[tuple[int, ...]] = []
        for flow in self.flows:
            up = 2 * n if flow.src == UPSTREAM else flow.src
            own = [up, n + flow.dst]
            feeder = self.feeder(flow)
            if feeder is not None and self.source_progress(flow) - flow.delivered < 1.0:
                # Caught up with a growing file: no faster than it grows.
                own.append(len(capacity))
                capacity.append(feeder.rate)
            links.append(tuple(own))
        for flow, rate in zip(self.flows, max_min(links, capacity), strict=True):
            flow.rate = rate

    def advance(self, dt: float) -> None:
        for flow in self.flows:
            flow.delivered = min(float(flow.length), flow.delivered + flow.rate * dt)
        # A tailing flow cannot pass its source; clamp along chains (bounded passes).
        for _ in range(16):
            changed = False
            for flow in self.flows:
                limit = self.source_progress(flow)
                if flow.delivered > limit:
                    flow.delivered = limit
                    changed = True
            if not changed:
                break
        self.now += dt

    def _complete(self, flow: _Flow) -> None:
        fill = self.fills[flow.dst][flow.blob]
        fill.version += 1
        if flow.src == UPSTREAM:
            fill.have.update(range(fill.count))
            fill.upstream = None
        else:
            fill.flows.remove(flow)
            fill.have.add(flow.piece)
            self.serving[flow.src] -= 1
            self.uploads[flow.src] += flow.length
        if len(fill.have) >= fill.count and fill.done_at is None:
            fill.done_at = self.now
            self._next_for_client(flow.dst)

    def _next_for_client(self, node: int) -> None:
        blobs = self.s.blobs
        busy = sum(
            1 for b, f in self.fills[node].items() if f.done_at is None and b < self.next_blob[node]
        )
        while self.next_blob[node] < len(blobs) and busy < self.s.parallel:
            blob = self.next_blob[node]
            self.next_blob[node] += 1
            if blob in self.fills[node]:
                # Filled already as the owner for others; the client still waits for it.
                if self.fills[node][blob].done_at is not None:
                    continue
            else:
                self.want(node, blob)
            busy += 1
        if self.next_blob[node] >= len(blobs) and all(
            self.fills[node].get(b) is not None and self.fills[node][b].done_at is not None
            for b in range(len(blobs))
        ):
            self.finish[node] = min(self.finish[node], self.now)

    def run(self, limit: float = 1e6) -> Outcome:
        for node in range(self.s.nodes):
            self._next_for_client(node)
        while any(math.isinf(t) for t in self.finish):
            self.events += 1
            self.allocate()
            horizon = self._next_event()
            if horizon is None or self.now > limit:
                raise RuntimeError(f"the model stalled at t={self.now:.3f}")
            self.advance(horizon)
            done = [f for f in self.flows if f.length - f.delivered < 0.5]
            if done:
                self.flows = [f for f in self.flows if f.length - f.delivered >= 0.5]
                touched: set[tuple[int, int]] = set()
                for flow in done:
                    self._complete(flow)
                    touched.add((flow.dst, flow.blob))
                for node, blob in sorted(touched) if self.s.policy != "no-peers" else ():
                    self.ask(node, blob)
            while self.retries and self.retries[0][0] <= self.now + 1e-12:
                _, node, blob = heapq.heappop(self.retries)
                self.ask(node, blob)
        wall = max(self.finish, default=0.0) + self.s.overhead
        return Outcome(wall, self.upstream_bytes, self.uploads, self.finish, self.events)

    def _next_event(self) -> float | None:
        best = math.inf
        for flow in self.flows:
            if flow.rate > 0:
                best = min(best, (flow.length - flow.delivered) / flow.rate)
        if self.retries:
            best = min(best, self.retries[0][0] - self.now)
        if math.isinf(best):
            return None
        return max(best, self.s.step)


def simulate(setup: Setup) -> Outcome:
    """Run one modelled rollout to the end."""
    return Model(setup).run()
