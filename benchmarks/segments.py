#!/usr/bin/env python3
"""Cold pulls through cacheproxy's segmented fills, against an upstream that throttles
each connection (as S3, Cloudflare and GCS do), beside the upstream itself and nginx
proxy_cache, in one run.

One upstream registry behind one nginx throttle (``limit_rate`` per connection, an
access log of every request with its Range and body bytes). Each system in turn,
restarted with an empty cache before every scenario:

- ``direct``: the clients pull from the throttle itself;
- ``cacheproxy sN``: ``upstream_segments = N`` for each N asked for;
- ``nginx``: ``proxy_cache`` with ``proxy_cache_lock`` (one upstream connection).

Scenarios: the image (a big layer and three small ones) and one big blob, with 1 and
8 verifying clients; then the image with 32 cold clients, for the time to each blob
GET's first byte and the proxy's CPU per GB served. Measured: wall time, upstream
bytes per copy of the content (the throttle's log), the proxy's CPU (user+sys of its
process tree) per GB served, its peak RSS (VmHWM of the fresh process).

    python3 -m benchmarks.segments              # full: 248 MB image, 1 GB blob, 100 MB/s
    python3 -m benchmarks.segments --quick      # smoke: small content, s1 and s4
    python3 -m benchmarks.segments --write      # also write the section in RESULTS.md
    python3 -m benchmarks.segments --profile    # also: where the cold path's CPU goes
    python3 -m benchmarks.segments --render benchmarks/out-segments/results.json --write
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Started as a file: run as the module it is, so that benchmarks and tests import
    # as the packages they are (from the repository root, where this is started).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.segments", *sys.argv[1:]])

import argparse
import asyncio
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks.anchors import CacheproxySut, NginxCacheSut, Sut, Throttle, reset
from benchmarks.load import PullResult, cold_pull, pull_blob, tree_cpu, tree_kib
from benchmarks.profile import Profiler, inclusive_items, top_items
from benchmarks.run import code_under_test, log, machine, run_in, write_results
from benchmarks.segments_report import (
    DIRECT,
    NGINX,
    Measure,
    cacheproxy_label,
    notes,
    table,
    targets,
)
from tests.support.images import push_blob_stream, push_image, random_chunks
from tests.support.registry import RegistryProcess

ROOT = Path(__file__).resolve().parents[1]
NAME = "bench/segments"
TAG = "latest"
MB = 1_000_000
DEFAULT_SEGMENTS = 4  # Config.upstream_segments


@dataclass(frozen=True)
class Settings:
    """What one run pulls and how."""

    mode: str
    layer_sizes: tuple[int, ...]
    blob_size: int
    rate_mb: int
    segments: tuple[int, ...]
    clients: tuple[int, ...] = (1, 8)
    many: int = 32
    what: tuple[str, ...] = ("image", "blob")


FULL = Settings("full", (200 * MB, 30 * MB, 12 * MB, 6 * MB), 1000 * MB, 100, (1, 2, 4, 8))
QUICK = Settings("quick", (24 * MB, 4 * MB, 2 * MB, 1 * MB), 64 * MB, 50, (1, 4))


@dataclass(frozen=True)
class Content:
    manifest_digest: str
    image_size: int
    blob_digest: str
    blob_size: int


async def push_content(upstream: RegistryProcess, s: Settings) -> Content:
    image = await push_image(
        upstream.url, NAME, TAG, layer_sizes=s.layer_sizes, media="oci", seed="segments-bench"
    )
    digest, size = "", 0
    if "blob" in s.what:
        digest, size = await push_blob_stream(
            upstream.url, NAME, random_chunks(s.blob_size, seed="segments-bench/blob")
        )
    size_of_image = len(image.manifest) + sum(b.size for b in image.blobs)
    return Content(image.digest, size_of_image, digest, size)


def scenarios(s: Settings) -> list[tuple[str, int]]:
    cold = [(what, n) for what in ("image", "blob") if what in s.what for n in s.clients]
    return [*cold, ("image", s.many)] if "image" in s.what else cold


async def pull(url: str, what: str, clients: int, c: Content) -> PullResult:
    if what == "image":
        return await cold_pull(url, NAME, TAG, c.manifest_digest, clients)
    return await pull_blob(url, NAME, c.blob_digest, c.blob_size, clients)


async def measure(
    system: str, sut: Sut | None, throttle: Throttle, c: Content, s: Settings
) -> list[Measure]:
    """Every scenario on one system, each from an empty cache."""
    out = []
    url = sut.url if sut is not None else throttle.url
    for what, clients in scenarios(s):
        log(f"{system}: cold {what}, {clients} client{'s' if clients > 1 else ''}")
        pid = None
        if sut is not None:
            await asyncio.to_thread(reset, sut)
            pid = sut.pid
        mark = throttle.mark()
        cpu0 = tree_cpu(pid) if pid else (0.0, 0.0)
        result = await pull(url, what, clients, c)
        # The proxy's fill (and nginx's cache fill) may outlast the clients.
        if not await asyncio.to_thread(throttle.quiesce, 300.0):
            log("  WARNING: upstream still busy after 300 s")
        cpu1 = tree_cpu(pid) if pid else (0.0, 0.0)
        traffic = throttle.since(mark)
        content = c.image_size if what == "image" else c.blob_size
        m = Measure(
            system=system,
            what=what,
            clients=clients,
            wall=result.wall,
            content=content,
            served=result.bytes,
            upstream=traffic.body_bytes,
            upstream_gets=traffic.blob_gets,
            ranged_gets=traffic.ranged_gets,
            cpu=sum(cpu1) - sum(cpu0) if pid else None,
            rss_kib=tree_kib(pid, "VmHWM") if pid else None,
            first_bytes=result.first_bytes,
            client_first_bytes=result.client_first_bytes or result.first_bytes,
            failures=result.failures,
        )
        for failure in m.failures[:5]:
            log(f"  FAILURE {failure}")
        out.append(m)
    return out


async def profile(
    sut: CacheproxySut, throttle: Throttle, c: Content, s: Settings, workdir: Path
) -> list[str]:
    """py-spy on cacheproxy during a cold 1-client pull of the blob (the fill's own
    cost dominates) and a cold many-client pull of the image (serving dominates)."""
    lines = []
    for what, clients in (("blob", 1), ("image", s.many)):
        log(f"{sut.label}: profiling a cold {what} pull with {clients} client(s)")
        await asyncio.to_thread(reset, sut)
        assert sut.pid is not None
        out = workdir / f"profile-{what}-{clients}.txt"
        cpu0 = tree_cpu(sut.pid)
        async with Profiler(sut.pid, out):
            await pull(sut.url, what, clients, c)
            await asyncio.to_thread(throttle.quiesce, 300.0)
        cpu1 = tree_cpu(sut.pid)
        who = f"{clients} client{'s' if clients > 1 else ''}"
        lines.append(
            f"- Where cacheproxy's CPU goes, cold {what} pull, {who}: "
            f"{cpu1[0] - cpu0[0]:.2f} s user + {cpu1[1] - cpu0[1]:.2f} s sys (py-spy,"
            f" share of non-idle samples; raw stacks in {out.name}). Own time:"
        )
        lines += [f"  - {item}" for item in top_items(out, 12)]
        lines.append("  Including what they call, the functions of cacheproxy/blobs/:")
        lines += [f"  - {item}" for item in inclusive_items(out, 8, "cacheproxy/blobs/")]
    return lines


def section(
    title: str, command: str, about: str, ms: Sequence[Measure], s: Settings, extra: list[str]
) -> str:
    systems = [DIRECT, *(cacheproxy_label(n) for n in s.segments), NGINX]
    systems = [x for x in systems if any(m.system == x for m in ms)]
    default = DEFAULT_SEGMENTS if DEFAULT_SEGMENTS in s.segments else s.segments[-1]
    return "\n\n".join(
        [
            f"## {title}",
            f"Command: `{command}`",
            about,
            table(ms, systems, scenarios(s)),
            "Targets, as ratios within this run:",
            targets(ms, s.segments, default, s.many),
            "\n".join(notes(ms) + extra),
        ]
    )


def describe(s: Settings, c: Content, code: str) -> str:
    layers = "/".join(f"{n / MB:.0f}" for n in s.layer_sizes)
    return "\n".join(
        [
            machine(code),
            f"- Image: config + layers of {layers} MB of random data, {c.image_size / MB:.1f} MB"
            f" with the manifest; blob: {c.blob_size / MB:.0f} MB.",
            f"- Upstream: docker-registry behind nginx `limit_rate {s.rate_mb * MB}` (bytes/s)"
            " per connection. Clients (benchmarks/load.py) verify every blob's sha256, 3 blobs"
            " at a time each. Every system restarts with an empty cache before each scenario.",
        ]
    )


async def run(args: argparse.Namespace) -> int:
    s = QUICK if args.quick else FULL
    if args.segments:
        s = replace(s, segments=tuple(args.segments))
    if args.rate:
        s = replace(s, rate_mb=args.rate)
    if args.what:
        s = replace(s, what=tuple(args.what))
    workdir: Path = args.workdir
    upstream = RegistryProcess(workdir / "upstream")
    throttle = Throttle(workdir / "throttle", "", str(s.rate_mb * MB))
    suts: list[Sut] = []
    t0 = time.monotonic()
    try:
        source, code = code_under_test(workdir)
        log(f"{s.mode} run in {workdir}: cacheproxy {code}")
        upstream.start()
        content = await push_content(upstream, s)
        throttle.upstream_hostport = upstream.host
        throttle.start()
        measures: list[Measure] = []
        systems: list[tuple[str, Sut | None]] = []
        if "direct" in args.systems:
            systems.append((DIRECT, None))
        for n in s.segments if "cacheproxy" in args.systems else ():
            env = {"CACHEPROXY_UPSTREAM_SEGMENTS": str(n)}
            sut = CacheproxySut(
                cacheproxy_label(n), workdir / f"cacheproxy-s{n}", throttle.url, None, source, env
            )
            systems.append((sut.label, sut))
        if "nginx" in args.systems:
            nginx = NginxCacheSut(NGINX, workdir / "nginx", f"127.0.0.1:{throttle.port}")
            systems.append((NGINX, nginx))
        for system, sut in systems:
            if sut is not None:
                suts.append(sut)
            try:
                measures += await measure(system, sut, throttle, content, s)
            finally:
                if sut is not None:
                    await asyncio.to_thread(sut.stop)
        extra: list[str] = []
        if args.profile:
            env = {"CACHEPROXY_UPSTREAM_SEGMENTS": str(DEFAULT_SEGMENTS)}
            sut = CacheproxySut("profiled", workdir / "profiled", throttle.url, None, source, env)
            suts.append(sut)
            try:
                extra = await profile(sut, throttle, content, s, workdir)
            finally:
                await asyncio.to_thread(sut.stop)
        (workdir / "results.json").write_text(
            json.dumps(
                {
                    "settings": asdict(s),
                    "about": describe(s, content, code),
                    "command": command(args),
                    "seconds": time.monotonic() - t0,
                    "measures": [asdict(m) for m in measures],
                    "extra": extra,
                },
                indent=1,
            )
        )
        return emit(workdir / "results.json", args.write)
    finally:
        for sut in suts:
            sut.stop()
        throttle.terminate()
        upstream.stop()
        if not args.keep:
            shutil.rmtree(workdir / "upstream" / "data", ignore_errors=True)
            shutil.rmtree(workdir / "cacheproxy-src", ignore_errors=True)
            for n in s.segments:
                shutil.rmtree(workdir / f"cacheproxy-s{n}" / "cache", ignore_errors=True)
            shutil.rmtree(workdir / "profiled" / "cache", ignore_errors=True)
            shutil.rmtree(workdir / "nginx" / "cache", ignore_errors=True)


def emit(results: Path, write: bool) -> int:
    """Print (and with ``write``, put in RESULTS.md) the section for a results file."""
    doc = json.loads(results.read_text())
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc["settings"].items()})
    ms = [Measure(**m) for m in doc["measures"]]
    title = f"Segmented fills, {s.mode} run ({doc['seconds']:.0f} s)"
    text = section(title, doc["command"], doc["about"], ms, s, doc["extra"])
    print(text)
    if write:
        write_results(text, f"segments-{s.mode}")
        log("wrote benchmarks/RESULTS.md")
    return 1 if any(m.failures for m in ms) else 0


def command(args: argparse.Namespace) -> str:
    flags = " --quick" if args.quick else ""
    if args.segments:
        flags += " --segments " + " ".join(map(str, args.segments))
    if args.rate:
        flags += f" --rate {args.rate}"
    if args.profile:
        flags += " --profile"
    if args.what:
        flags += " --what " + " ".join(args.what)
    if len(args.systems) < 3:
        flags += " --systems " + " ".join(args.systems)
    return f"python3 -m benchmarks.segments{flags}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small content: a smoke run")
    parser.add_argument("--segments", type=int, nargs="+", help="cacheproxy segment counts")
    parser.add_argument("--rate", type=int, help="throttle, MB/s per upstream connection")
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=("direct", "cacheproxy", "nginx"),
        default=("direct", "cacheproxy", "nginx"),
        help="systems to measure (default: all)",
    )
    parser.add_argument(
        "--what", nargs="+", choices=("image", "blob"), help="content (default: both)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy on the cold path")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep caches and upstream data")
    parser.add_argument("--render", type=Path, help="only render this results.json")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "benchmarks" / "out-segments", help="scratch"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return emit(args.render, args.write)
    return run_in(args.workdir, run(args))


if __name__ == "__main__":
    sys.exit(main())
