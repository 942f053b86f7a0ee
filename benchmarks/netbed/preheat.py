"""A preheat before a rollout: ``cacheproxy prefetch --cluster --copies N`` run inside
the first node's namespace against its own server, timed, with the kernel's counters
of every veth before and after (and after the network is quiet again).

Use it as ``bed.rollout("cluster", n, before=preheat(2))``: the rollout's clients then
start on a warm cluster, and :attr:`Rollout.before` is the :class:`Preheat`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

from .bed import NAME, TAG, Bed, Step
from .net import Counters
from .sampler import Sampler
from .systems import PORT, ROOT, NsProcess, clean_env


@dataclass
class Preheat:
    """What one preheat measured."""

    returncode: int
    output: str
    #: Seconds the command ran, and between the counters' two reads.
    wall: float
    window: float
    #: Bytes the upstream sent; each node's received and sent (its veth's counters).
    upstream: int
    downloads: list[int]
    uploads: list[int]
    #: Each node's highest rate received, in bytes a second over 2 s and over 5 s
    #: (sampler.py).
    peak_rx: list[int]
    peak_rx_5s: list[int]


def preheat(copies: int, timeout: float = 120.0) -> Step:
    """The step that preheats the bed's image onto each blob's owner and ``copies``
    more nodes."""

    def step(bed: Bed, servers: list[NsProcess]) -> Preheat:
        assert bed.net is not None and servers
        argv = [sys.executable, "-m", "cacheproxy", "prefetch", "--cluster"]
        # On the node's loopback: the preheat endpoint is an operator's.
        local = f"http://127.0.0.1:{PORT}"
        argv += ["--copies", str(copies), "--url", local, f"{NAME}:{TAG}"]
        before = bed.net.all_counters()
        started = time.monotonic()
        with Sampler(bed.net) as sampler:
            done = subprocess.run(
                bed.net.nodes[0].exec(argv),
                capture_output=True,
                cwd=ROOT,
                env=clean_env(),
                timeout=timeout,
                check=False,
            )
        wall = time.monotonic() - started
        bed.quiet(time.monotonic() + timeout)
        after = bed.net.all_counters()
        window = time.monotonic() - started
        deltas: dict[str, Counters] = {k: after[k] - before[k] for k in after}
        nodes = [deltas[ep.name] for ep in bed.net.nodes[: len(servers)]]
        return Preheat(
            returncode=done.returncode,
            output=(done.stdout + done.stderr).decode(errors="replace"),
            wall=wall,
            window=window,
            upstream=deltas["up"].tx,
            downloads=[c.rx for c in nodes],
            uploads=[c.tx for c in nodes],
            peak_rx=[sampler.peaks(ep.name).rx for ep in bed.net.nodes[: len(servers)]],
            peak_rx_5s=[sampler.peaks(ep.name, 5.0).rx for ep in bed.net.nodes[: len(servers)]],
        )

    return step
