"""Cluster benchmark: K cacheproxy peers vs K independent distribution proxies.

K = 1, 2, 4 nodes on loopback in front of one throttled upstream; every node's
clients pull the same cold image at once. Reported: wall time and upstream bytes /
image size (from the throttle's access log). Target for cacheproxy at K = 4: <= 1.05
(independent proxies: about K, distribution even more, as it goes upstream again for
every concurrent miss).

    python3 -m benchmarks.cluster [--quick] [--write]
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Started as a file: run as the module it is, so that benchmarks and tests import
    # as the packages they are (from the repository root, where this is started).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.cluster", *sys.argv[1:]])

import argparse
import asyncio
import datetime
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.anchors import CacheproxySut, DistributionSut, Throttle
from benchmarks.load import PullResult, cold_pull
from benchmarks.run import write_results
from tests.support.images import push_image
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess

NAME = "bench/cluster"
TAG = "latest"
MB = 1_000_000
SECRET = "benchmark-cluster-secret-0123456789"


class PeerSut(CacheproxySut):
    """One cacheproxy node of a cluster."""

    def __init__(
        self,
        label: str,
        workdir: Path,
        upstream_url: str,
        members: list[str],
        port: int,
        secret_file: Path,
    ) -> None:
        super().__init__(label, workdir, upstream_url, None)
        self.port = port
        self.members = members
        self.secret_file = secret_file

    def argv(self) -> list[str]:
        argv = super().argv()
        argv += ["--self", self.url, "--peer-secret-file", str(self.secret_file)]
        for member in self.members:
            argv += ["--peer", member]
        return argv


@dataclass
class Row:
    label: str
    k: int
    wall: float
    upstream_ratio: float
    failures: int
    fetches: int


async def pull_everywhere(nodes: list[str], clients: int, digest: str) -> list[PullResult]:
    return list(
        await asyncio.gather(*(cold_pull(url, NAME, TAG, digest, clients) for url in nodes))
    )


async def scenario(
    label: str, k: int, nodes: list[str], throttle: Throttle, clients: int, digest: str, size: int
) -> Row:
    mark = throttle.mark()
    started = asyncio.get_running_loop().time()
    results = await pull_everywhere(nodes, clients, digest)
    wall = asyncio.get_running_loop().time() - started
    await asyncio.to_thread(throttle.quiesce)
    traffic = throttle.since(mark)
    failures = sum(len(r.failures) for r in results)
    for r in results:
        for failure in r.failures[:3]:
            print(f"  {label} K={k}: {failure}", file=sys.stderr)
    return Row(label, k, wall, traffic.body_bytes / size, failures, sum(r.fetches for r in results))


async def run(args: argparse.Namespace) -> int:
    layer_sizes = [5 * MB] * 4 if args.quick else [20 * MB] * 4
    ks = [1, 2] if args.quick else [1, 2, 4]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cacheproxy-cluster-") as tmp:
        work = Path(tmp)
        secret = work / "secret"
        secret.write_text(SECRET)
        with RegistryProcess(work / "upstream") as upstream:
            image = await push_image(
                upstream.url, NAME, TAG, layer_sizes=layer_sizes, seed="cluster-bench"
            )
            size = len(image.manifest) + sum(b.size for b in image.blobs)
            for k in ks:
                # cacheproxy peers: a fresh throttle (own log) and fresh caches.
                throttle = Throttle(work / f"t-cp-{k}", upstream.host, str(args.rate * MB))
                throttle.start()
                ports = [free_port() for _ in range(k)]
                members = [f"http://127.0.0.1:{p}" for p in ports]
                nodes = [
                    PeerSut(
                        f"cacheproxy-{i}", work / f"cp-{k}-{i}", throttle.url, members, p, secret
                    )
                    for i, p in enumerate(ports)
                ]
                try:
                    for node in nodes:
                        node.start()
                    rows.append(
                        await scenario(
                            "cacheproxy peers",
                            k,
                            [n.url for n in nodes],
                            throttle,
                            args.clients,
                            image.digest,
                            size,
                        )
                    )
                finally:
                    for node in nodes:
                        node.stop()
                    throttle.terminate()
                # K independent distribution proxies.
                throttle = Throttle(work / f"t-d-{k}", upstream.host, str(args.rate * MB))
                throttle.start()
                dists = [
                    DistributionSut(f"d-{i}", work / f"d-{k}-{i}", throttle.url) for i in range(k)
                ]
                try:
                    for d in dists:
                        d.start()
                    rows.append(
                        await scenario(
                            "distribution proxies",
                            k,
                            [d.url for d in dists],
                            throttle,
                            args.clients,
                            image.digest,
                            size,
                        )
                    )
                finally:
                    for d in dists:
                        d.stop()
                    throttle.terminate()
                print(f"K={k} done", file=sys.stderr)
    section = render(rows, args, size)
    print(section)
    if args.write:
        write_results(section, "cluster-quick" if args.quick else "cluster")
    return 1 if any(r.failures for r in rows) else 0


def render(rows: list[Row], args: argparse.Namespace, size: int) -> str:
    lines = [
        f"## Cluster: K nodes, {args.clients} cold clients per node, one throttled upstream",
        "",
        f"Command: `python3 -m benchmarks.cluster{' --quick' if args.quick else ''}`",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} CPUs, {platform.machine()}, kernel {platform.release()}",
        f"- Image {size / MB:.1f} MB (config + 4 random layers); upstream throttled to "
        f"{args.rate} MB/s per connection",
        "",
        "| system | K | wall s | upstream bytes / image | failed fetches |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.k} | {r.wall:.2f} | {r.upstream_ratio:.2f} | "
            f"{r.failures} / {r.fetches} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--clients", type=int, default=8, help="cold clients per node")
    parser.add_argument("--rate", type=int, default=50, help="upstream MB/s per connection")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
