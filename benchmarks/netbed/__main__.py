"""Run the bed: ``python3 -m benchmarks.netbed --nodes 4 8 --rate 400mbit --runs 3 [--write]``.

Needs root (network namespaces, ``tc``), ``iproute2`` and ``docker-registry``.
``--cleanup`` removes namespaces left by beds whose process is gone (``--cleanup-all``:
every bed's, running ones included) and exits.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from .bed import MB, SYSTEMS, Bed, Rollout
from .net import cleanup
from .report import as_json, table
from .systems import ROOT

#: 248 MB: one 200 MB layer and three smaller ones (payload before tar and gzip).
LAYERS = (200, 25, 15, 8)
RATE = "400mbit"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.netbed", description=__doc__)
    p.add_argument("--nodes", type=int, nargs="+", default=[4, 8], help="cluster sizes")
    p.add_argument("--rate", default=RATE, help="each node's up and down (tc syntax)")
    p.add_argument("--upstream-rate", help="the upstream's egress (default: --rate)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--layers", type=int, nargs="+", default=list(LAYERS), help="layer MB")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per rollout")
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a cacheproxy setting of every node (repeatable), e.g. peer_piece_size=1MiB",
    )
    p.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "netbed")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--cleanup", action="store_true", help="remove leftovers and exit")
    p.add_argument("--cleanup-all", action="store_true", help="also beds still running")
    return p.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwind through every finally (processes stopped, namespaces removed).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("the bed needs root: network namespaces, veth pairs and tc", file=sys.stderr)
        return 2
    if args.cleanup or args.cleanup_all:
        removed = cleanup(everything=args.cleanup_all)
        print("removed: " + (", ".join(removed) or "nothing"))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    rollouts: list[Rollout] = []
    nodes = sorted(set(args.nodes))
    upstream_rate = args.upstream_rate or args.rate
    layers = tuple(mb * MB for mb in args.layers)
    settings = dict(item.split("=", 1) for item in args.setting)
    with Bed(
        args.workdir, max(nodes), args.rate, upstream_rate, layers, args.timeout, settings
    ) as bed:
        for run in range(args.runs):
            for system, n in plan(args.systems, nodes):
                r = bed.rollout(system, n)
                rollouts.append(r)
                print(
                    f"run {run + 1}: {system} x{r.nodes}: {r.wall:.2f} s, "
                    f"upstream {r.upstream / bed.image_size:.2f}, "
                    f"busiest upload {max(r.uploads) / bed.image_size:.2f}, "
                    f"verified {r.verified}/{len(r.clients)}",
                    file=sys.stderr,
                    flush=True,
                )
        assert bed.image is not None
        size = bed.image_size
        record = {
            "command": "python3 -m benchmarks.netbed " + " ".join(sys.argv[1:]),
            "rate": args.rate,
            "upstream_rate": upstream_rate,
            "image_size": size,
            # In manifest order (config first), as the clients ask for them.
            "blobs": [{"digest": b.digest, "size": b.size} for b in bed.image.blobs],
            "members": [bed.node_url(i) for i in range(max(nodes))],
            "rollouts": as_json(rollouts),
        }
    (args.workdir / results_name(args.rate)).write_text(json.dumps(record, indent=1))
    section = render(args, rollouts, size, time.monotonic() - started)
    print(section)
    if args.write:
        from benchmarks.run import write_results

        write_results(section, "netbed" if args.rate == RATE else f"netbed-{args.rate}")
    failed = sum(len(r.clients) - r.verified for r in rollouts)
    return 1 if failed else 0


def results_name(rate: str) -> str:
    """Where a run's rollouts go: ``results.json`` at the default rate (what the
    model's check reads), ``results-<rate>.json`` at any other."""
    return "results.json" if rate == RATE else f"results-{rate}.json"


def plan(systems: list[str], nodes: list[int]) -> list[tuple[str, int]]:
    out = [("alone", 1)] if "alone" in systems else []
    for n in nodes:
        out += [(s, n) for s in SYSTEMS if s in systems and s != "alone"]
    return out


def render(args: argparse.Namespace, rollouts: list[Rollout], size: int, took: float) -> str:
    argv = " ".join(sys.argv[1:]) if argv_is_ours() else ""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return "\n".join(
        [
            "## Rollout on a kernel network (network namespaces, veth, tbf)"
            + ("" if args.rate == RATE else f", {args.rate}"),
            "",
            f"Command: `python3 -m benchmarks.netbed {argv}` ({took:.0f} s)",
            "",
            f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
            f"{os.cpu_count()} CPUs, kernel {platform.release()}; cacheproxy commit {commit}",
            f"- Each node's veth limited to {args.rate} up and down (tbf), the upstream's "
            f"egress to {args.upstream_rate or args.rate}; image {size / MB:.1f} MB "
            f"(layers of {', '.join(str(x) for x in args.layers)} MB before tar+gzip, and a "
            "config); one verifying client per node, all released together; "
            f"{args.runs} run(s): median (min-max).",
            "- Upstream bytes: the upstream namespace's veth tx counter; a node's upload: its "
            "veth tx counter (its own client talks to it over the namespace's loopback, so "
            "this is what it sent to other nodes, plus TCP acknowledgements). CPU: the "
            "busiest node's server process (user + system, /proc/PID/stat) during the "
            "rollout; the machine's CPUs busy: /proc/stat over the rollout (servers, "
            "clients and the kernel's network path, all on this machine).",
            "",
            table(rollouts, size),
        ]
    )


def argv_is_ours() -> bool:
    return sys.argv[0].endswith(("netbed", "__main__.py"))


if __name__ == "__main__":
    raise SystemExit(main())
