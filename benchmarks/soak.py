#!/usr/bin/env python3
"""Bounded soak: N concurrent keep-alive connections against cacheproxy and distribution.

Each connection loops for a fixed time over a mix of manifest-by-tag, manifest-by-digest,
blob and ranged-blob GETs of content pushed to a real upstream registry, checking every
answer byte for byte. Both systems run on loopback, one after the other, each fresh
with an empty cache warmed by one pass over the content; the table gives errors (the
target is zero), latency percentiles, requests/s, peak RSS and server CPU side by side.

    python3 -m benchmarks.soak                     # 1000 connections, 120 s per system
    python3 -m benchmarks.soak --quick             # 20 s per system
    python3 -m benchmarks.soak --connections 200 --duration 60 --only cacheproxy
    python3 -m benchmarks.soak --write             # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Started as a file: run as the module it is, so that benchmarks and tests import
    # as the packages they are (from the repository root, where this is started).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.soak", *sys.argv[1:]])

import argparse
import asyncio
import json
import random
import resource
import shutil
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.anchors import CacheproxySut, DistributionSut, Sut
from benchmarks.load import (
    MANIFEST_ACCEPT,
    CpuWindow,
    RssSampler,
    tree_cpu,
    tree_kib,
)
from benchmarks.run import code_under_test, log, machine, run_in, write_results
from tests.support.images import PushedImage, push_image
from tests.support.registry import RegistryProcess

NAME = "soak/app"
KINDS = ("manifest by tag", "manifest by digest", "blob", "ranged blob")
#: Share of each request kind in the mix (same order as KINDS).
MIX = (0.3, 0.2, 0.3, 0.2)
#: Images pushed, and the layer sizes of each (before tar+gzip).
IMAGES = 8
LAYER_SIZES = (16 * 1024, 256 * 1024, 1024 * 1024)
#: Seconds one request may take before it counts as an error (a hang).
REQUEST_TIMEOUT = 30.0
#: Connections opened at once while ramping up (listen backlogs are ~100).
RAMP_BATCH = 50
SYSTEMS = ("cacheproxy", "distribution")
MIB = 1 << 20


@dataclass(frozen=True)
class Target:
    kind: str
    path: str
    body: bytes  # the exact bytes a 200 must carry


@dataclass
class Content:
    tags: list[Target] = field(default_factory=list)
    digests: list[Target] = field(default_factory=list)
    blobs: list[Target] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(t.body) for t in [*self.digests, *self.blobs])


@dataclass
class Window:
    """When latencies count (start) and when connections stop (stop); set once every
    connection is open."""

    start: float = float("inf")
    stop: float = float("inf")


@dataclass
class Stats:
    """Counts and latencies of one soak, per request kind."""

    latencies: dict[str, array[float]] = field(
        default_factory=lambda: {k: array("d") for k in KINDS}
    )
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    requests: int = 0
    bytes: int = 0
    reconnects: int = 0

    #: When the soak began (the first connection), for the error samples.
    began: float = field(default_factory=time.monotonic)

    def error(self, kind: str, what: str, started: float | None = None) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 20:
            at = (started if started is not None else time.monotonic()) - self.began
            self.error_samples.append(f"{kind} sent at {at:.1f} s: {what}")


@dataclass
class Result:
    label: str
    connections: int
    duration: float = 0.0
    requests: int = 0
    requests_in_window: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    rps: float = 0.0
    mb_per_s: float = 0.0
    percentiles_ms: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    rss_idle_mib: float = 0.0
    rss_peak_mib: float = 0.0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    upstream_requests: int = 0
    listen_overflows: int = 0
    #: Share of the machine's CPUs busy outside the client, server and upstream.
    others_cpu: float = 0.0
    reconnects: int = 0
    failure: str | None = None


# --- content ---------------------------------------------------------------------------


async def push_content(upstream: RegistryProcess) -> Content:
    content = Content()
    for i in range(IMAGES):
        image: PushedImage = await push_image(
            upstream.url, NAME, f"t{i}", layer_sizes=LAYER_SIZES, seed=f"soak-{i}"
        )
        content.tags.append(Target(KINDS[0], f"/v2/{NAME}/manifests/t{i}", image.manifest))
        content.digests.append(
            Target(KINDS[1], f"/v2/{NAME}/manifests/{image.digest}", image.manifest)
        )
        for digest, data in image.blob_data.items():
            content.blobs.append(Target(KINDS[2], f"/v2/{NAME}/blobs/{digest}", data))
    return content


# --- a small HTTP/1.1 client ---------------------------------------------------------------


class BadAnswer(Exception):
    pass


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        raise BadAnswer(f"HTTP {status} without a length")
    return status, headers, body


def request_bytes(host: str, path: str, kind: str, extra: str = "") -> bytes:
    accept = f"Accept: {MANIFEST_ACCEPT}\r\n" if kind.startswith("manifest") else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{accept}{extra}\r\n".encode()


def check(
    kind: str,
    target: Target,
    status: int,
    headers: dict[str, str],
    body: bytes,
    first: int,
    last: int,
) -> str | None:
    """None if the answer is right, else what is wrong."""
    if kind == KINDS[3]:
        if status != 206:
            return f"HTTP {status} for a range"
        want = f"bytes {first}-{last}/{len(target.body)}"
        if headers.get("content-range") != want:
            return f"Content-Range {headers.get('content-range')!r}, expected {want!r}"
        if body != target.body[first : last + 1]:
            return "wrong bytes in the range"
        return None
    if status != 200:
        return f"HTTP {status}: {body[:100]!r}"
    if body != target.body:
        return f"wrong body ({len(body)} bytes, expected {len(target.body)})"
    return None


async def connection(
    host: str,
    port: int,
    content: Content,
    stats: Stats,
    seed: int,
    window: Window,
) -> None:
    """One client connection: requests in a loop until the window closes."""
    rng = random.Random(seed)
    pools = (content.tags, content.digests, content.blobs, content.blobs)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while True:
            if writer is None:
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
                except (OSError, TimeoutError) as exc:
                    stats.error("connect", f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.5)
                    if time.monotonic() >= window.stop:
                        return
                    continue
            if time.monotonic() >= window.stop:
                return
            assert reader is not None
            i = rng.choices(range(4), MIX)[0]
            kind = KINDS[i]
            target = rng.choice(pools[i])
            first = last = 0
            extra = ""
            if kind == KINDS[3]:
                size = len(target.body)
                first = rng.randrange(size)
                last = min(size - 1, first + rng.randrange(1, 256 * 1024))
                extra = f"Range: bytes={first}-{last}\r\n"
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    writer.write(request_bytes(host, target.path, kind, extra))
                    status, headers, body = await read_answer(reader)
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                BadAnswer,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                stats.error(kind, f"{type(exc).__name__} {exc}".strip(), t0)
                writer.close()
                writer = None
                stats.reconnects += 1
                continue
            t1 = time.monotonic()
            stats.requests += 1
            stats.bytes += len(body)
            problem = check(kind, target, status, headers, body, first, last)
            if problem is not None:
                stats.error(kind, problem, t0)
            elif t0 >= window.start:
                stats.latencies[kind].append(t1 - t0)
            if headers.get("connection", "").lower() == "close":
                writer.close()
                writer = None
                stats.reconnects += 1
    finally:
        if writer is not None:
            writer.close()


async def warm(url: str, content: Content) -> list[str]:
    """One pass over every manifest and blob (fills the cache); the failures."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
    failures = []
    try:
        for target in [*content.tags, *content.digests, *content.blobs]:
            writer.write(request_bytes(host, target.path, target.kind))
            async with asyncio.timeout(120):
                status, headers, body = await read_answer(reader)
            problem = check(target.kind, target, status, headers, body, 0, 0)
            if problem is not None:
                failures.append(f"{target.path}: {problem}")
    finally:
        writer.close()
    return failures


# --- one system ------------------------------------------------------------------------------


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full
    (TcpExt ListenOverflows, machine-wide, since boot)."""
    rows = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    tcp_ext = [row for row in rows if row and row[0] == "TcpExt:"]
    if len(tcp_ext) < 2:
        return 0
    return int(dict(zip(tcp_ext[0][1:], tcp_ext[1][1:], strict=True))["ListenOverflows"])


def upstream_lines(upstream: RegistryProcess) -> int:
    try:
        with upstream.access_log_path.open("rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


async def soak(
    sut: Sut,
    upstream: RegistryProcess,
    content: Content,
    connections: int,
    duration: float,
    ramp_pause: float,
) -> Result:
    result = Result(sut.label, connections)
    await asyncio.to_thread(sut.start)
    try:
        pid = sut.pid
        assert pid is not None
        failures = await warm(sut.url, content)
        if failures:
            raise RuntimeError(f"warm-up failed: {failures[:3]}")
        await asyncio.sleep(1.0)
        result.rss_idle_mib = tree_kib(pid, "VmRSS") / 1024
        host, port = sut.url.removeprefix("http://").rsplit(":", 1)
        stats = Stats()
        overflows0 = listen_overflows()
        up0 = upstream_lines(upstream)
        cpu0 = tree_cpu(pid)
        own0 = resource.getrusage(resource.RUSAGE_SELF)
        # The window opens once every connection is up; ramp-up requests count for
        # errors but not for latency.
        window = Window()
        tasks: list[asyncio.Task[None]] = []
        pids = [p for p in (pid, upstream.pid) if p is not None]
        with CpuWindow(pids) as machine_cpu:
            async with RssSampler(pid, interval=0.5) as sampler:
                for i in range(connections):
                    task = connection(host, int(port), content, stats, i, window)
                    tasks.append(asyncio.create_task(task))
                    if (i + 1) % RAMP_BATCH == 0:
                        await asyncio.sleep(ramp_pause)
                t_start = time.monotonic()
                window.start, window.stop = t_start, t_start + duration
                log(f"{sut.label}: {connections} connections open, soaking for {duration:.0f} s")
                try:
                    async with asyncio.timeout(duration + REQUEST_TIMEOUT + 30):
                        await asyncio.gather(*tasks)
                except TimeoutError:
                    stats.error("soak", "connections still running after the window")
                elapsed = time.monotonic() - t_start
        cpu1 = tree_cpu(pid)
        own1 = resource.getrusage(resource.RUSAGE_SELF)
        result.duration = elapsed
        result.requests = stats.requests
        result.errors = sum(stats.errors.values())
        result.errors_by_kind = dict(stats.errors)
        result.error_samples = stats.error_samples
        counted = sum(len(v) for v in stats.latencies.values())
        result.requests_in_window = counted
        result.rps = counted / duration
        result.mb_per_s = stats.bytes / elapsed / 1e6
        everything = array("d")
        for kind, values in stats.latencies.items():
            result.percentiles_ms[kind] = _percentiles(values)
            everything.extend(values)
        result.percentiles_ms["all"] = _percentiles(everything)
        result.rss_peak_mib = max(sampler.peak_kib, tree_kib(pid, "VmHWM")) / 1024
        result.cpu_s = sum(cpu1) - sum(cpu0)
        result.client_cpu_s = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
        result.upstream_requests = upstream_lines(upstream) - up0
        result.listen_overflows = listen_overflows() - overflows0
        result.others_cpu = machine_cpu.other_share
        result.reconnects = stats.reconnects
    finally:
        await asyncio.to_thread(sut.stop)
    return result


def _percentiles(values: array[float]) -> tuple[float, float, float]:
    if not values:
        return (0.0, 0.0, 0.0)
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (at(0.5), at(0.99), ordered[-1] * 1000)


# --- report -----------------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    def cell(r: Result, fn: object) -> str:
        if r.failure:
            return "error"
        return fn(r)  # type: ignore[operator, no-any-return]

    rows: list[tuple[str, object]] = [
        ("connections (kept alive)", lambda r: f"{r.connections:,}"),
        (
            "requests, all / in the timed window",
            lambda r: f"{r.requests:,} / {r.requests_in_window:,}",
        ),
        ("errors, all requests (target 0)", lambda r: f"{r.errors:,}"),
        ("requests/s (timed window)", lambda r: f"{r.rps:,.0f}"),
        ("body MB/s", lambda r: f"{r.mb_per_s:,.0f}"),
        ("latency p50 / p99 / max, ms: all", lambda r: _pct(r, "all")),
    ]
    for kind in KINDS:
        rows.append((f"latency p50 / p99 / max, ms: {kind}", lambda r, k=kind: _pct(r, k)))
    rows += [
        (
            "peak RSS MiB (idle, warm)",
            lambda r: f"{r.rss_peak_mib:,.0f} ({r.rss_idle_mib:,.0f})",
        ),
        ("server CPU s (user+sys)", lambda r: f"{r.cpu_s:,.1f}"),
        ("upstream requests during the soak", lambda r: f"{r.upstream_requests:,}"),
        ("connects dropped by a full listen queue (kernel)", lambda r: f"{r.listen_overflows:,}"),
        (
            "CPU used outside client, server, upstream (softirq incl.)",
            lambda r: f"{r.others_cpu:.0%}",
        ),
    ]
    lines = ["| | " + " | ".join(r.label for r in results) + " |"]
    lines.append("|---|" + "---:|" * len(results))
    for title, fn in rows:
        lines.append(f"| {title} | " + " | ".join(cell(r, fn) for r in results) + " |")
    return "\n".join(lines)


def _pct(r: Result, kind: str) -> str:
    p50, p99, top = r.percentiles_ms.get(kind, (0.0, 0.0, 0.0))
    return f"{p50:,.1f} / {p99:,.1f} / {top:,.0f}"


def notes(results: Sequence[Result], content: Content, duration: float) -> str:
    mix = ", ".join(f"{k} {int(m * 100)}%" for k, m in zip(KINDS, MIX, strict=True))
    out = [
        f"- Mix: {mix}; ranges are random spans of up to 256 KiB inside a blob. Content: "
        f"{IMAGES} OCI images (config + 3 random layers, {len(content.blobs)} blobs, "
        f"{content.size / 1e6:.1f} MB), pushed to a local `docker-registry`; each system "
        "starts with an empty cache warmed by one pass over every manifest and blob.",
        f"- Each connection sends its next request as soon as the last answer was read and "
        f"checked byte for byte (status, length, content, Content-Range); a request taking "
        f"over {REQUEST_TIMEOUT:.0f} s, a broken connection or a wrong byte is an error. "
        f"Latency is counted for requests started inside the {duration:.0f} s window, after "
        "every connection is open; errors are counted throughout.",
        "- One Python client process (asyncio + uvloop, a minimal HTTP/1.1 client) drives "
        "all connections; client, server and upstream share the machine's 2 CPUs.",
    ]
    for r in results:
        if r.failure:
            out.append(f"- {r.label}: ERROR {r.failure}")
            continue
        extra = ""
        if r.error_samples:
            extra = "; first errors: " + "; ".join(r.error_samples[:5])
        out.append(
            f"- {r.label}: window {r.duration:.1f} s, errors by kind {r.errors_by_kind or 0}, "
            f"reconnects {r.reconnects}, client CPU {r.client_cpu_s:.1f} s{extra}."
        )
    return "\n".join(out)


# --- main -------------------------------------------------------------------------------------


def raise_fd_limit(connections: int) -> int:
    """Raise the soft open-files limit (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * connections + 4096
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < connections + 256:
        raise SystemExit(f"open-files limit {soft} is too low for {connections} connections")
    return soft


async def run(args: argparse.Namespace) -> int:
    duration = args.duration or (20.0 if args.quick else 120.0)
    workdir: Path = args.workdir
    upstream = RegistryProcess(workdir / "upstream")
    t0 = time.monotonic()
    results: list[Result] = []
    code = "?"
    try:
        # A frozen copy of cacheproxy/ runs, so edits made meanwhile do not leak in.
        source, code = code_under_test(workdir)
        log(f"soak: {args.connections} connections, {duration:.0f} s per system, in {workdir}")
        log(f"cacheproxy {code}")
        upstream.start()
        content = await push_content(upstream)
        log(f"pushed {IMAGES} images, {len(content.blobs)} blobs, {content.size / 1e6:.1f} MB")
        suts: dict[str, Sut] = {
            "cacheproxy": CacheproxySut(
                "cacheproxy" + (f" --loop {args.loop}" if args.loop else ""),
                workdir / "cacheproxy",
                upstream.url,
                args.loop,
                source,
            ),
            "distribution": DistributionSut(
                "distribution proxy", workdir / "distribution", upstream.url
            ),
        }
        for key in [k for k in SYSTEMS if not args.only or k in args.only]:
            sut = suts[key]
            try:
                results.append(
                    await soak(sut, upstream, content, args.connections, duration, args.ramp)
                )
            except Exception as exc:  # one broken system must not hide the other
                log(f"{sut.label}: ERROR {type(exc).__name__}: {exc}")
                results.append(
                    Result(sut.label, args.connections, failure=f"{type(exc).__name__}: {exc}")
                )
            r = results[-1]
            log(f"{sut.label}: {r.requests:,} requests, {r.errors} errors, {r.rps:,.0f} req/s")
    finally:
        upstream.stop()
        if not args.keep:
            shutil.rmtree(workdir / "upstream" / "data", ignore_errors=True)
            shutil.rmtree(workdir / "cacheproxy" / "cache", ignore_errors=True)
            shutil.rmtree(workdir / "distribution" / "data", ignore_errors=True)
    text = table(results)
    note = notes(results, content, duration)
    print(text)
    print()
    print(note)
    (workdir / "soak.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    if args.write:
        flags = " --quick" if args.quick else ""
        if args.connections != 1000:
            flags += f" --connections {args.connections}"
        if args.duration:
            flags += f" --duration {args.duration:g}"
        if args.ramp != 0.05:
            flags += f" --ramp {args.ramp:g}"
        if args.loop:
            flags += f" --loop {args.loop}"
        key, title = (
            "soak",
            f"## Soak: {args.connections:,} connections, {duration:.0f} s per system",
        )
        if args.only and set(args.only) != set(SYSTEMS):
            key += "-" + "-".join(sorted(args.only))
            title += f", {' and '.join(sorted(args.only))} only"
            flags += " --only " + " ".join(sorted(args.only))
        if args.loop:
            key += f"-loop-{args.loop}"
            title += f", `--loop {args.loop}`"
        if args.ramp != 0.05:
            key += f"-ramp{args.ramp:g}"
            ramp_s = args.connections / RAMP_BATCH * args.ramp
            title += f", connections opened over {ramp_s:.0f} s"
        section = "\n\n".join(
            [
                title,
                f"Command: `python3 -m benchmarks.soak{flags}` ({time.monotonic() - t0:.0f} s)",
                machine(code),
                text,
                note,
            ]
        )
        write_results(section, key)
        log("wrote benchmarks/RESULTS.md")
    return 1 if any(r.failure or r.errors for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000, help="concurrent connections")
    parser.add_argument("--duration", type=float, help="seconds per system (default 120)")
    parser.add_argument("--quick", action="store_true", help="20 s per system")
    parser.add_argument("--only", nargs="+", choices=SYSTEMS, help="systems to soak")
    parser.add_argument(
        "--loop", choices=("auto", "uvloop", "asyncio"), help="cacheproxy's event loop"
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.05,
        metavar="SECONDS",
        help=f"pause after each {RAMP_BATCH} connections opened (default 0.05)",
    )
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "soak", help="scratch"
    )
    parser.add_argument("--keep", action="store_true", help="keep caches and upstream data")
    args = parser.parse_args(argv)
    if args.connections < 1 or (args.duration is not None and not 0 < args.duration <= 3600):
        parser.error("--connections must be positive and --duration within (0, 3600]")
    raise_fd_limit(args.connections)
    return run_in(args.workdir, run(args))


if __name__ == "__main__":
    sys.exit(main())
