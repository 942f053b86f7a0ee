"""The bandwidth limits as the kernel sees them: ``python3 -m benchmarks.netbed.limits``.

On a bed of ``--nodes`` nodes: a preheat (``prefetch --cluster --copies 2``) and then a
cluster rollout, each without and with its limit (``prefetch_rate``,
``peer_upload_rate``). Printed per run: the highest rate each node held over 2 s
(its veth's counters sampled, headers included: sampler.py), received in the
preheat and sent in the rollout, as a share of the limit, and the preheat's and the
rollout's wall time. The limit is the tests' to hold from above, over a whole run;
this table shows how close to it a node gets. Needs root, like every bed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from .bed import MB, Bed
from .net import cleanup
from .preheat import Preheat, preheat
from .sampler import Sampler
from .systems import ROOT


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.netbed.limits", description=__doc__)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--rate", default="400mbit", help="each node's up and down (tc syntax)")
    p.add_argument("--layers", type=int, nargs="+", default=[100, 20], help="layer MB")
    p.add_argument("--limit", type=float, default=10.0, help="each limit, in MB a second")
    p.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "limits")
    return p.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    limit = int(args.limit * MB)
    layers = tuple(mb * MB for mb in args.layers)
    cleanup()
    rows = []
    with Bed(args.workdir, args.nodes, args.rate, args.rate, layers, timeout=900.0) as bed:
        for setting in (None, str(limit)):
            settings = {"prefetch_rate": setting} if setting else {}
            r = bed.rollout("cluster", args.nodes, settings=settings, before=preheat(2, 900.0))
            p = r.before
            assert isinstance(p, Preheat) and p.returncode == 0, p
            rows.append(("prefetch_rate", setting or "none", p.wall, p.peak_rx, p.peak_rx_5s))
        assert bed.net is not None
        for setting in (None, str(limit)):
            settings = {"peer_upload_rate": setting} if setting else {}
            with Sampler(bed.net) as sampler:
                r = bed.rollout("cluster", args.nodes, settings=settings)
            assert r.verified == args.nodes, r.clients
            eps = bed.net.nodes[: args.nodes]
            two = [sampler.peaks(ep.name).tx for ep in eps]
            five = [sampler.peaks(ep.name, 5.0).tx for ep in eps]
            rows.append(("peer_upload_rate", setting or "none", r.wall, two, five))
    print(f"{args.nodes} nodes at {args.rate}, layers {args.layers} MB, limit {args.limit} MB/s")
    print("| limit | set | wall s | each node's highest rate / limit, over 2 s | over 5 s |")
    print("|---|---|---|---|---|")
    for kind, setting, wall, two, five in rows:
        cells = [" ".join(f"{x / limit:.2f}" for x in peaks) for peaks in (two, five)]
        print(f"| {kind} | {setting} | {wall:.1f} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
