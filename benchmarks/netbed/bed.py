"""One bed (network, upstream, image) and the rollouts run on it.

A rollout: start the system under test on the first ``n`` nodes, start one verifying
client per node, release them together, wait (bounded) for every client, wait until
the network is quiet (background fills counted too), read the counters, stop
everything and wipe the caches. Systems:

- ``alone``: one node, ``cacheproxy`` without peers (the baseline);
- ``cluster``: ``cacheproxy`` on every node in cluster mode (static ``--peer`` list):
  pieces from every node holding a blob (``peer_holders``, the default);
- ``star``: the same with ``--no-peer-holders``: every node takes a blob from its
  owner alone;
- ``nopeers``: ``cacheproxy`` on every node, each on its own;
- ``distribution``: ``docker-registry`` in proxy mode on every node;
- ``direct``: nothing; every client pulls straight from the upstream.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cacheproxy.peers.ring import ranked
from tests.support.images import PushedImage, push_image
from tests.support.registry import RegistryProcess

from .children import (
    busy_share,
    cpu_seconds,
    end_process,
    machine_jiffies,
    read_line,
    read_result,
    stderr_tail,
)
from .net import Counters, Network
from .systems import (
    PORT,
    ROOT,
    NsProcess,
    cacheproxy_node,
    clean_env,
    registry,
    wait_ready,
)

#: A step of a rollout before its clients: the bed and its running servers in, what
#: it measured out.
Step = Callable[["Bed", list[NsProcess]], Any]

SYSTEMS = ("alone", "cluster", "star", "nopeers", "distribution", "direct")
LABELS = {
    "alone": "one node alone (cacheproxy)",
    "cluster": "cacheproxy cluster mode (holders)",
    "star": "cacheproxy cluster mode, owner only",
    "nopeers": "cacheproxy, no peers",
    "distribution": "distribution proxy on each node",
    "direct": "straight from the upstream",
}
NAME = "netbed/app"
TAG = "v1"
SECRET = "netbed-cluster-secret-0123456789"
MB = 1_000_000
QUIET = 0.5
QUIET_BUDGET = 30.0


@dataclass(frozen=True)
class Kill:
    """``kill -9`` one node once a counter of it passed ``after`` bytes.

    ``node`` is an index, or ``"owner"``: the owner of the image's biggest layer.
    ``counter``: ``"tx"`` (it has uploaded that much) or ``"rx"`` (received).
    """

    node: int | str
    after: int
    counter: str = "tx"


@dataclass
class Rollout:
    """What one rollout measured."""

    system: str
    nodes: int
    wall: float
    upstream: int
    uploads: list[int]
    downloads: list[int]
    clients: list[dict[str, Any]]
    killed: int | None = None
    kill_at: float | None = None
    #: CPU seconds (user + system) each node's server used during the rollout, and
    #: the share of all the machine's CPUs that were busy (servers, clients, kernel).
    cpu: list[float] = field(default_factory=list)
    busy: float = 0.0
    #: Seconds between the counters' two reads (the clients' run and the quiet after).
    window: float = 0.0
    #: What the step before the clients measured (``rollout(before=...)``), if any.
    before: Any = None

    @property
    def verified(self) -> int:
        return sum(1 for c in self.clients if c.get("ok"))

    def survivors(self) -> list[dict[str, Any]]:
        return [c for i, c in enumerate(self.clients) if i != self.killed]


@dataclass
class Bed:
    """The network for up to ``nodes`` nodes, the upstream and the image on it."""

    workdir: Path
    nodes: int
    rate: str
    upstream_rate: str
    layers: tuple[int, ...]
    timeout: float = 600.0
    #: More settings of every cacheproxy node, by name (``peer_piece_size``: "1MiB").
    settings: dict[str, str] = field(default_factory=dict)
    image: PushedImage | None = None
    net: Network | None = None
    upstream: NsProcess | None = None
    running: list[NsProcess] = field(default_factory=list)

    @property
    def image_size(self) -> int:
        assert self.image is not None
        return len(self.image.manifest) + sum(b.size for b in self.image.blobs)

    @property
    def upstream_url(self) -> str:
        assert self.net is not None
        return f"http://{self.net.upstream.address}:{PORT}"

    def __enter__(self) -> Bed:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        store = self.workdir / "upstream"
        # Push on loopback (the host's namespace), then serve the same storage in the bed.
        with RegistryProcess(store) as loopback:
            self.image = asyncio.run(
                push_image(loopback.url, NAME, TAG, layer_sizes=self.layers, seed="netbed")
            )
        self.net = Network(self.nodes, self.rate, self.upstream_rate)
        self.net.create()
        self.upstream = registry("upstream", self.net.upstream, store, None)
        self.upstream.start()
        wait_ready([self.upstream])

    def close(self) -> None:
        for proc in self.running:
            proc.stop()
        self.running.clear()
        if self.upstream is not None:
            self.upstream.stop()
            self.upstream = None
        if self.net is not None:
            self.net.destroy()
            self.net = None

    def owner_of_biggest(self, n: int) -> int:
        """The node index that owns the biggest layer in an ``n``-node cluster."""
        assert self.image is not None and self.net is not None
        biggest = max(self.image.blobs, key=lambda b: b.size)
        members = [self.node_url(i) for i in range(n)]
        return members.index(ranked(biggest.digest, members)[0])

    def node_url(self, i: int) -> str:
        """Node ``i``'s cacheproxy URL (its cluster member name)."""
        assert self.net is not None
        return f"http://{self.net.nodes[i].address}:{PORT}"

    # --- one rollout -------------------------------------------------------------------

    def rollout(
        self,
        system: str,
        n: int,
        kill: Kill | None = None,
        settings: dict[str, str] | None = None,
        before: Step | None = None,
    ) -> Rollout:
        """``settings``: the nodes' settings for this rollout, over the bed's;
        ``before``: a step run once the servers answer and before the clients start
        (a preheat), its result in :attr:`Rollout.before`."""
        if system not in SYSTEMS:
            raise ValueError(f"system {system!r}: one of {', '.join(SYSTEMS)}")
        assert self.net is not None and self.image is not None
        n = 1 if system == "alone" else n
        if n > self.nodes:
            raise ValueError(f"{n} nodes, the bed has {self.nodes}")
        run_dir = self.workdir / f"{system}-{n}-{time.monotonic_ns()}"
        servers = self._servers(system, n, run_dir, {**self.settings, **(settings or {})})
        self.running = servers
        try:
            for proc in servers:
                proc.start()
            if servers:
                wait_ready(servers)
            ahead = before(self, servers) if before is not None else None
            bases = [s.url for s in servers] if servers else [self.upstream_url] * n
            victim = None
            if kill is not None:
                victim = self.owner_of_biggest(n) if kill.node == "owner" else int(kill.node)
            made = self._pull(system, n, bases, kill, victim)
            made.before = ahead
            return made
        finally:
            for proc in servers:
                proc.stop()
            self.running = []
            shutil.rmtree(run_dir, ignore_errors=True)

    def _servers(
        self, system: str, n: int, run_dir: Path, settings: dict[str, str]
    ) -> list[NsProcess]:
        assert self.net is not None
        eps = self.net.nodes[:n]
        if system == "direct":
            return []
        if system == "distribution":
            return [
                registry(f"distribution-{i}", ep, run_dir / f"n{i}", self.upstream_url)
                for i, ep in enumerate(eps)
            ]
        members: list[str] = []
        secret: Path | None = None
        if system in ("cluster", "star"):
            members = [self.node_url(i) for i in range(n)]
            secret = run_dir / "secret"
            run_dir.mkdir(parents=True, exist_ok=True)
            secret.write_text(SECRET)
        return [
            cacheproxy_node(
                f"cacheproxy-{i}",
                ep,
                run_dir / f"n{i}",
                self.upstream_url,
                members,
                secret,
                holders=system != "star",
                settings=settings,
            )
            for i, ep in enumerate(eps)
        ]

    def _pull(
        self, system: str, n: int, bases: list[str], kill: Kill | None, victim: int | None
    ) -> Rollout:
        assert self.net is not None and self.image is not None
        deadline = time.monotonic() + self.timeout
        digest, budget = self.image.digest, str(self.timeout)
        clients = [
            subprocess.Popen(
                self.net.nodes[i].exec(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.netbed.client",
                        bases[i],
                        NAME,
                        TAG,
                        digest,
                        budget,
                    ]
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env=clean_env(),
                start_new_session=True,
            )
            for i in range(n)
        ]
        try:
            for proc in clients:
                if read_line(proc, deadline).strip() != "ready":
                    raise RuntimeError(f"client did not start: {stderr_tail(proc)}")
            before = self.net.all_counters()
            read_at = time.monotonic()
            cpu_before = [cpu_seconds(p.pid) for p in self.running]
            machine_before = machine_jiffies()
            killer = _Killer(self, kill, victim) if kill is not None else None
            for proc in clients:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                proc.stdin.close()
            results = [read_result(proc, deadline) for proc in clients]
            machine_after = machine_jiffies()
            if killer is not None:
                killer.stop()
            self.quiet(deadline)
            after = self.net.all_counters()
            window = time.monotonic() - read_at
            cpu = [cpu_seconds(p.pid) - b for p, b in zip(self.running, cpu_before, strict=True)]
        finally:
            for proc in clients:
                end_process(proc)
        rollout = self._measure(system, n, results, before, after, victim, killer)
        rollout.cpu = cpu
        rollout.busy = busy_share(machine_before, machine_after)
        rollout.window = window
        return rollout

    def quiet(self, deadline: float) -> None:
        """Wait until no counter moves for ``QUIET`` seconds (at most ``QUIET_BUDGET``)."""
        assert self.net is not None
        last = self.net.all_counters()
        stop = min(deadline, time.monotonic() + QUIET_BUDGET)
        while time.monotonic() < stop:
            time.sleep(QUIET)
            now = self.net.all_counters()
            # A few hundred bytes: ARP, a keep-alive probe; not a transfer.
            if all(abs((now[k] - last[k]).tx) < 4096 for k in now):
                return
            last = now

    def _measure(
        self,
        system: str,
        n: int,
        results: list[dict[str, Any]],
        before: dict[str, Counters],
        after: dict[str, Counters],
        victim: int | None,
        killer: _Killer | None,
    ) -> Rollout:
        assert self.net is not None
        deltas = {k: after[k] - before[k] for k in after}
        nodes = [deltas[ep.name] for ep in self.net.nodes[:n]]
        timed = [r for i, r in enumerate(results) if i != victim and "start" in r]
        wall = max(r["end"] for r in timed) - min(r["start"] for r in timed) if timed else 0.0
        return Rollout(
            system=system,
            nodes=n,
            wall=wall,
            upstream=deltas["up"].tx,
            uploads=[c.tx for c in nodes],
            downloads=[c.rx for c in nodes],
            clients=results,
            killed=victim if killer is not None and killer.fired is not None else None,
            kill_at=killer.fired if killer is not None else None,
        )


class _Killer:
    """A thread that ``kill -9``s the victim once its counter passes the mark."""

    def __init__(self, bed: Bed, kill: Kill, victim: int | None) -> None:
        assert bed.net is not None and victim is not None
        self.bed = bed
        self.kill = kill
        self.victim = victim
        self.ep = bed.net.nodes[victim]
        self.start = bed.net.counters(self.ep)
        self.fired: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="netbed-killer", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        assert self.bed.net is not None
        while not self._done.wait(0.05):
            moved = self.bed.net.counters(self.ep) - self.start
            value = moved.tx if self.kill.counter == "tx" else moved.rx
            if value >= self.kill.after:
                proc = self.bed.running[self.victim]
                proc.kill()
                self.fired = time.monotonic()
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
