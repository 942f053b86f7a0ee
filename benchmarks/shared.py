"""Shared tier benchmark: two "clusters" (cacheproxy nodes that are peers within a
cluster, never across) and one bucket, in front of one throttled upstream.

Cluster A pulls a cold image (every node's clients at once) and writes it back to
the bucket; then cluster B, whose caches are empty, pulls the same image. The
bucket is moto's S3 server on loopback (MinIO is in neither PyPI nor Debian).
Reported: upstream bytes per image across both clusters (from the throttle's
access log; target <= 1.05), B's cold-pull wall time against A's, and the proxies'
CPU seconds per GB delivered to clients.

    python3 -m benchmarks.shared [--quick] [--write] [--nodes K] [--clients N]
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Started as a file: run as the module it is (see benchmarks/cluster.py).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.shared", *sys.argv[1:]])

import argparse
import asyncio
import datetime
import platform
import re
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.anchors import CacheproxySut, Throttle
from benchmarks.load import cold_pull, tree_cpu
from benchmarks.run import write_results
from tests.support.images import push_image
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess
from tests.support.s3 import AWS_ENV, MotoS3, shared_table
from tests.support.waiting import eventually

NAME = "bench/shared"
TAG = "latest"
MB = 1_000_000
SECRET = "benchmark-shared-secret-0123456789"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ROOT = Path(__file__).resolve().parent.parent


class SharedNode(CacheproxySut):
    """One cacheproxy node of a cluster, with the shared tier configured."""

    def __init__(
        self, label: str, workdir: Path, upstream_url: str, config: Path, members: list[str],
        port: int, secret: Path,
    ) -> None:  # fmt: skip
        super().__init__(label, workdir, upstream_url, None)
        self.config = config
        self.members = members
        self.port = port
        self.secret = secret

    def argv(self) -> list[str]:
        argv = [*super().argv(), "--config", str(self.config)]
        if len(self.members) > 1:
            argv += ["--self", self.url, "--peer-secret-file", str(self.secret)]
            for member in self.members:
                argv += ["--peer", member]
        return argv

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        from benchmarks.anchors import wait_http

        # This checkout's package, whatever is installed; the bucket's test keys.
        env = {**AWS_ENV, "PYTHONPATH": str(ROOT)}
        proc = self.spawn(self.argv(), self.log, self.workdir, env)
        wait_http(f"{self.url}/v2/", proc, self.log)

    def pending_uploads(self) -> float:
        with _OPENER.open(f"{self.url}/metrics", timeout=5.0) as resp:
            text = resp.read().decode()
        found = re.search(r"^cacheproxy_shared_uploads_pending (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0


@dataclass
class Row:
    cluster: str
    wall: float
    upstream_bytes: int
    served_bytes: int
    cpu_seconds: float
    failures: int


def start_cluster(
    label: str, work: Path, nodes: int, upstream_url: str, config: Path, secret: Path
) -> list[SharedNode]:
    ports = [free_port() for _ in range(nodes)]
    members = [f"http://127.0.0.1:{p}" for p in ports]
    cluster = [
        SharedNode(f"{label}-{i}", work / f"{label}-{i}", upstream_url, config, members, p, secret)
        for i, p in enumerate(ports)
    ]
    for node in cluster:
        node.start()
    return cluster


async def pull(
    label: str, cluster: list[SharedNode], throttle: Throttle, clients: int, digest: str
) -> Row:
    """Every node's clients pull the cold image at once."""
    mark = throttle.mark()
    cpu0 = [sum(tree_cpu(n.pid)) for n in cluster if n.pid]
    started = time.perf_counter()
    results = await asyncio.gather(*(cold_pull(n.url, NAME, TAG, digest, clients) for n in cluster))
    wall = time.perf_counter() - started
    await asyncio.to_thread(throttle.quiesce)
    cpu1 = [sum(tree_cpu(n.pid)) for n in cluster if n.pid]
    failures = sum(len(r.failures) for r in results)
    for r in results:
        for failure in r.failures[:3]:
            print(f"  {label}: {failure}", file=sys.stderr)
    return Row(
        label,
        wall,
        throttle.since(mark).body_bytes,
        sum(r.bytes for r in results),
        sum(cpu1) - sum(cpu0),
        failures,
    )


DRAIN_LIMIT = 300.0


async def drain(cluster: list[SharedNode]) -> None:
    """Wait (bounded) until every node has written back what it fetched."""

    async def drained() -> bool:
        pending = await asyncio.gather(*(asyncio.to_thread(n.pending_uploads) for n in cluster))
        return not any(pending)

    await eventually(drained, timeout=DRAIN_LIMIT, interval=0.2, what="every upload finished")


async def run(args: argparse.Namespace) -> int:
    layer_sizes = [5 * MB] * 2 if args.quick else [20 * MB] * 4
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cacheproxy-shared-") as tmp:
        work = Path(tmp)
        secret = work / "secret"
        secret.write_text(SECRET)
        with RegistryProcess(work / "upstream") as upstream, MotoS3(work) as moto:
            image = await push_image(
                upstream.url, NAME, TAG, layer_sizes=layer_sizes, seed="shared-bench"
            )
            size = len(image.manifest) + sum(b.size for b in image.blobs)
            bucket = moto.new_bucket()
            config = work / "shared.toml"
            config.write_text(shared_table(moto.url, bucket))
            throttle = Throttle(work / "throttle", upstream.host, str(args.rate * MB))
            throttle.start()
            try:
                for label in ("A", "B"):
                    cluster = start_cluster(label, work, args.nodes, throttle.url, config, secret)
                    try:
                        rows.append(
                            await pull(label, cluster, throttle, args.clients, image.digest)
                        )
                        await drain(cluster)
                    finally:
                        for node in cluster:
                            node.stop()
                    print(f"cluster {label} done", file=sys.stderr)
            finally:
                throttle.terminate()
    section = render(rows, args, size)
    print(section)
    if args.write:
        write_results(section, "shared-quick" if args.quick else "shared")
    return 1 if any(r.failures for r in rows) else 0


def render(rows: list[Row], args: argparse.Namespace, size: int) -> str:
    """The RESULTS.md section for two clusters and one bucket."""
    total_upstream = sum(r.upstream_bytes for r in rows)
    a, b = rows[0], rows[-1]
    lines = [
        f"## Shared tier: two clusters of {args.nodes} nodes, one bucket, "
        f"{args.clients} cold clients per node",
        "",
        f"Command: `python3 -m benchmarks.shared{' --quick' if args.quick else ''}"
        f" --nodes {args.nodes} --clients {args.clients} --rate {args.rate}`",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} CPUs, {platform.machine()}, kernel {platform.release()}",
        f"- Image {size / MB:.1f} MB (config + random layers); upstream throttled to "
        f"{args.rate} MB/s per connection; the bucket is moto's S3 server on loopback",
        f"- Upstream bytes per image across both clusters: "
        f"**{total_upstream / size:.3f}** (target <= 1.05)",
        f"- Cluster B's cold pull against cluster A's: {b.wall / a.wall:.2f} x the wall time",
        "",
        "| cluster | wall s | upstream bytes / image | served GB | proxy CPU s / GB served |"
        " failed fetches |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gb = r.served_bytes / 1e9
        per_gb = r.cpu_seconds / gb if gb else 0.0
        lines.append(
            f"| {r.cluster} | {r.wall:.2f} | {r.upstream_bytes / size:.3f} | {gb:.2f} | "
            f"{per_gb:.2f} | {r.failures} |"
        )
    lines += [
        "",
        "A fetches from the upstream and writes back (upload time is not in its wall);"
        " B reads the bucket (each digest's owner only) and the upstream sees its tag"
        " HEADs only. moto is a Python server: against S3 or MinIO, B's wall is bound by"
        " the bucket's bandwidth, not moto's CPU, which shares the machine here.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--nodes", type=int, default=2, help="nodes per cluster")
    parser.add_argument("--clients", type=int, default=4, help="cold clients per node")
    parser.add_argument("--rate", type=int, default=50, help="upstream MB/s per connection")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
