"""The model past this machine, and its check against the bed.

    python3 -m benchmarks.netbed.curve [--nodes 1 4 8 ... 1000] [--rate 400mbit] [--write]
    python3 -m benchmarks.netbed.curve --check benchmarks/out/netbed/results.json

The curve: rollout time and busiest-node upload against the node count, for
``owner-only`` (today's star) and ``holders`` (the piece policy), with the model's
assumptions beside it. The check: the bed's own rollouts (its rate, image, digests and
member URLs, so the same owners) replayed in the model; every system at every node
count must come within ``--tolerance`` (15%) of the measured wall time. The one fitted
number is the per-client overhead (process start, manifest, connections): the
measured "one node alone" minus the model's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .net import rate_bytes
from .sim import ASSUMPTIONS, Setup, simulate

MB = 1_000_000
#: Payload per byte on the wire: 1448 bytes of TCP payload in a 1514-byte frame.
EFFICIENCY = 1448 / 1514
#: Seconds per client outside the transfer, when no measurement gives it.
OVERHEAD = 0.2
#: How each system of the bed is modelled: (policy, upstream copies per node).
MODELLED = {
    "alone": ("no-peers", 1),
    "cluster": ("holders", 1),
    "star": ("owner-only", 1),
    "nopeers": ("no-peers", 1),
    "direct": ("no-peers", 1),
    "distribution": ("no-peers", 2),
}


def base_setup(rate: str, upstream_rate: str, blobs: tuple[int, ...]) -> Setup:
    return Setup(
        nodes=1,
        blobs=blobs,
        node_rate=rate_bytes(rate) * EFFICIENCY,
        upstream_rate=rate_bytes(upstream_rate) * EFFICIENCY,
        overhead=OVERHEAD,
    )


def curve(args: argparse.Namespace) -> str:
    blobs = (2_000, *(mb * MB for mb in args.layers))
    size = sum(blobs)
    base = base_setup(args.rate, args.upstream_rate or args.rate, blobs)
    alone = simulate(replace(base, policy="no-peers")).wall
    lines = [
        "## Model: rollout time and busiest upload against cluster size",
        "",
        f"Command: `python3 -m benchmarks.netbed.curve {' '.join(sys.argv[1:])}`",
        "",
        f"- Image {size / MB:.0f} MB (layers of {', '.join(map(str, args.layers))} MB and a "
        f"config); every link {args.rate} ({base.node_rate / MB:.1f} MB/s of payload), the "
        f"upstream's egress {args.upstream_rate or args.rate}; one node alone: {alone:.2f} s.",
        f"- holders: pieces of {base.piece_size >> 20} MiB, up to {base.max_sources} sources "
        f"per node, {base.slots} uploads per node, {base.listed} holders named per asker "
        "(`cacheproxy/swarm/policy.py`). owner-only: the whole blob from the owner.",
        "",
        "| nodes | owner-only wall s | vs alone | busiest upload / image "
        "| holders wall s | vs alone | busiest upload / image |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in args.nodes:
        star = simulate(replace(base, nodes=n, policy="owner-only"))
        t0 = time.monotonic()
        tree = simulate(replace(base, nodes=n, policy="holders"))
        print(f"{n} nodes: holders modelled in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        lines.append(
            f"| {n} | {star.wall:.1f} | {star.wall / alone:.1f}x | "
            f"{star.busiest_upload / size:.2f} | {tree.wall:.1f} | {tree.wall / alone:.2f}x | "
            f"{tree.busiest_upload / size:.2f} |"
        )
    lines += [
        "",
        "The model against the bed, with the bed's own digests and owners: "
        "`--check benchmarks/out/netbed/results.json` (the section above).",
        "",
        "Assumptions of the model:",
        "",
        ASSUMPTIONS,
    ]
    return "\n".join(lines)


def check(path: Path, tolerance: float) -> tuple[str, bool]:
    record: dict[str, Any] = json.loads(path.read_text())
    blobs = tuple(int(b["size"]) for b in record["blobs"])
    keys = tuple(str(b["digest"]) for b in record["blobs"])
    base = replace(
        base_setup(record["rate"], record["upstream_rate"], blobs),
        members=tuple(record["members"]),
        keys=keys,
    )
    measured: dict[tuple[str, int], list[float]] = {}
    busy: dict[tuple[str, int], list[float]] = {}
    for r in record["rollouts"]:
        if r["killed"] is None:
            measured.setdefault((r["system"], r["nodes"]), []).append(r["wall"])
            busy.setdefault((r["system"], r["nodes"]), []).append(r.get("busy", 0.0))
    overhead = OVERHEAD
    if ("alone", 1) in measured:
        bare = simulate(replace(base, overhead=0.0, policy="no-peers")).wall
        overhead = max(0.0, statistics.median(measured[("alone", 1)]) - bare)
    runs = max(len(v) for v in measured.values()) if measured else 0
    lines = [
        f"Bed: `{record.get('command', '?')}` (on a shared machine: a check, not a benchmark)",
        "",
        f"Every link {record['rate']}, upstream egress {record['upstream_rate']}, image "
        f"{record['image_size'] / MB:.1f} MB, {runs} run(s) (median); the model with the "
        f"bed's digests and member URLs (same owners); fitted overhead per client "
        f"{overhead:.2f} s. The model has no CPU: the bed's CPUs busy are beside it.",
        "",
        "| system | nodes | measured wall s | model wall s | model error | CPUs busy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ok = True
    for (system, n), walls in sorted(measured.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        policy, copies = MODELLED[system]
        setup = replace(base, nodes=n, policy=policy, copies=copies, overhead=overhead)
        model = simulate(setup).wall
        wall = statistics.median(walls)
        error = (model - wall) / wall
        ok = ok and abs(error) <= tolerance
        cpu = statistics.median(busy[(system, n)])
        lines.append(f"| {system} | {n} | {wall:.2f} | {model:.2f} | {error:+.0%} | {cpu:.0%} |")
    return "\n".join(lines) + "\n", ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.netbed.curve", description=__doc__)
    p.add_argument(
        "--nodes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    )
    p.add_argument("--rate", default="400mbit")
    p.add_argument("--upstream-rate")
    p.add_argument("--layers", type=int, nargs="+", default=[200, 25, 15, 8])
    p.add_argument("--check", type=Path, help="a results.json written by the bed")
    p.add_argument("--tolerance", type=float, default=0.15)
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.check is not None:
        text, ok = check(args.check, args.tolerance)
        print(text)
        if args.write:
            from benchmarks.run import write_results

            command = "python3 -m benchmarks.netbed.curve --check RESULTS_JSON"
            head = f"## Model against the bed\n\nCommand: `{command}`\n\n"
            write_results(head + text, "netbed-model-check")
        return 0 if ok else 1
    text = curve(args)
    print(text)
    if args.write:
        from benchmarks.run import write_results

        write_results(text, "netbed-model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
