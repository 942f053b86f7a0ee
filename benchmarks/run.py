#!/usr/bin/env python3
"""cacheproxy against distribution's proxy mode and nginx proxy_cache, on one machine.

One run starts a real upstream (``docker-registry`` with generated content), puts a
throttling nginx in front of it for each system under test, and measures cold pulls
(1, 8, 32 clients), warm blob throughput, manifest requests/s and peak RSS. It prints
one markdown table; ``--write`` also puts it into ``benchmarks/RESULTS.md``.

    python3 -m benchmarks.run            # full run, ~6-10 minutes
    python3 -m benchmarks.run --quick    # smaller content, shorter runs, ~2 minutes
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Started as a file: run as the module it is, so that benchmarks and tests import
    # as the packages they are (from the repository root, where this is started).
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.run", *sys.argv[1:]])

import argparse
import asyncio
import datetime
import json
import platform
import shutil
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.anchors import (
    CacheproxySut,
    DistributionSut,
    NginxCacheSut,
    Sut,
    Throttle,
    clean_env,
    reset,
    snapshot_source,
)
from benchmarks.load import (
    CpuWindow,
    PullResult,
    RssSampler,
    children_cpu,
    client_session,
    cold_pull,
    curl_warm,
    fetch_manifest,
    manifest_rps,
    pull_blob,
    tree_cpu,
    tree_kib,
)
from tests.support.images import push_blob_stream, push_image, random_chunks
from tests.support.registry import RegistryProcess

NAME = "bench/app"
TAG = "latest"
MB = 1_000_000
MIB = 1 << 20
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


@dataclass(frozen=True)
class Settings:
    """What one run measures and how hard."""

    mode: str
    layer_sizes: tuple[int, ...]
    big_size: int
    rate_mb: int
    cold_clients: tuple[int, ...] = (1, 8, 32)
    rss_clients: int = 32
    warm_workers: int = 8
    warm_seconds: float = 10.0
    manifest_conns: int = 32
    manifest_seconds: float = 5.0
    #: Warm-blob and manifest runs per system; the table shows the median.
    repeats: int = 3


FULL = Settings(
    mode="full",
    layer_sizes=(40 * MIB, 30 * MIB, 20 * MIB, 10 * MIB),
    big_size=200 * MIB,
    rate_mb=50,
)
QUICK = Settings(
    mode="quick",
    layer_sizes=(16 * MIB, 12 * MIB, 8 * MIB, 4 * MIB),
    big_size=64 * MIB,
    rate_mb=50,
    warm_seconds=3.0,
    manifest_seconds=2.0,
    repeats=1,
)


@dataclass(frozen=True)
class Content:
    """What was pushed to the upstream."""

    manifest_digest: str
    image_size: int  # manifest + config + layers
    blob_count: int
    big_digest: str
    big_size: int


@dataclass
class Cold:
    clients: int
    wall: float
    upstream_bytes: int
    ratio: float
    upstream_blob_gets: int
    fetches: int
    failures: list[str]
    slowest_client: float
    fastest_client: float


@dataclass
class SutResult:
    """Everything measured for one system under test."""

    key: str
    label: str
    cold: dict[int, Cold] = field(default_factory=dict)
    rss_idle_kib: int = 0
    rss_hwm_kib: int = 0
    rss_sampled_peak_kib: int = 0
    big_wall: float = 0.0
    big_ratio: float = 0.0
    big_upstream_gets: int = 0
    big_failures: list[str] = field(default_factory=list)
    big_fetches: int = 0
    cache_status: str = ""
    warm_mb_s_runs: list[float] = field(default_factory=list)
    warm_downloads: int = 0
    big_size_served: int = 0
    warm_failures: list[str] = field(default_factory=list)
    warm_upstream_bytes: int = 0
    warm_cpu_user: float = 0.0
    warm_cpu_sys: float = 0.0
    warm_client_cpu: float = 0.0
    rps_runs: list[float] = field(default_factory=list)
    rps_tool: str = ""
    rps_requests: int = 0
    rps_errors: int = 0
    rps_detail: str = ""
    rps_upstream_requests: int = 0
    rps_cpu: float = 0.0
    other_cpu_share: float = 0.0
    steal_cpu: float = 0.0
    verify_failures: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def warm_mb_s(self) -> float:
        return statistics.median(self.warm_mb_s_runs) if self.warm_mb_s_runs else 0.0

    @property
    def rps(self) -> float:
        return statistics.median(self.rps_runs) if self.rps_runs else 0.0

    def failures(self) -> tuple[int, int]:
        """(failed fetches, fetches) over every verified or counted request."""
        failed = sum(len(c.failures) for c in self.cold.values())
        total = sum(c.fetches for c in self.cold.values())
        failed += len(self.big_failures) + len(self.warm_failures) + len(self.verify_failures)
        total += self.big_fetches + self.warm_downloads + len(self.warm_failures) + 1
        failed += self.rps_errors
        total += self.rps_requests
        return failed, total


# --- setup -------------------------------------------------------------------------


async def push_content(upstream: RegistryProcess, s: Settings) -> Content:
    """Push the image (random, incompressible layers) and the big blob upstream."""
    image = await push_image(
        upstream.url, NAME, TAG, layer_sizes=s.layer_sizes, media="oci", seed="cacheproxy-bench"
    )
    big_digest, big_size = await push_blob_stream(
        upstream.url, NAME, random_chunks(s.big_size, seed="cacheproxy-bench/big")
    )
    return Content(
        manifest_digest=image.digest,
        image_size=len(image.manifest) + sum(b.size for b in image.blobs),
        blob_count=len(image.blobs),
        big_digest=big_digest,
        big_size=big_size,
    )


def check_upstream(throttle: Throttle, content: Content) -> str:
    """The upstream serves blobs itself (200, no redirect); the throttle's real rate."""
    url = f"{throttle.url}/v2/{NAME}/blobs/{content.big_digest}"
    argv = ["curl", "-s", "-o", "/dev/null", "--noproxy", "*", "--max-time", "300"]
    argv += ["-w", "%{http_code} %{size_download} %{time_total} %{redirect_url}", url]
    out = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), check=False)
    code, size, secs, *redirect = out.stdout.split(" ")
    if code != "200" or any(redirect) or int(size) != content.big_size:
        raise RuntimeError(f"upstream blob GET answered {out.stdout!r}: expected 200, no redirect")
    rate = int(size) / float(secs) / MB
    return (
        f"The upstream answers a blob GET itself (200, no redirect); one connection through "
        f"the throttle took {float(secs):.2f} s for the big blob ({rate:.0f} MB/s: nginx "
        "lets the first second's worth through at once)"
    )


# --- measuring ---------------------------------------------------------------------


async def measure(
    sut: Sut, key: str, throttle: Throttle, upstream_pid: int | None, c: Content, s: Settings
) -> SutResult:
    r = SutResult(key, sut.label)
    for n in s.cold_clients:
        log(f"{sut.label}: cold pull, {n} clients")
        await asyncio.to_thread(reset, sut)
        mark = throttle.mark()
        pull = await cold_pull(sut.url, NAME, TAG, c.manifest_digest, n)
        await quiesce(throttle)
        traffic = throttle.since(mark)
        r.cold[n] = Cold(
            clients=n,
            wall=pull.wall,
            upstream_bytes=traffic.body_bytes,
            ratio=traffic.body_bytes / c.image_size,
            upstream_blob_gets=traffic.blob_gets,
            fetches=pull.fetches,
            failures=pull.failures,
            slowest_client=max(pull.client_times, default=0.0),
            fastest_client=min(pull.client_times, default=0.0),
        )
        report_failures(sut.label, f"cold {n}", pull)

    log(f"{sut.label}: {s.rss_clients} cold pulls of the {c.big_size // MIB} MiB blob (RSS)")
    await asyncio.to_thread(reset, sut)
    pid = sut.pid
    assert pid is not None
    r.rss_idle_kib = tree_kib(pid, "VmRSS")
    mark = throttle.mark()
    async with RssSampler(pid) as sampler:
        big = await pull_blob(sut.url, NAME, c.big_digest, c.big_size, s.rss_clients)
    r.rss_hwm_kib = tree_kib(pid, "VmHWM")
    r.rss_sampled_peak_kib = sampler.peak_kib
    await quiesce(throttle)
    traffic = throttle.since(mark)
    r.big_wall = big.wall
    r.big_ratio = traffic.body_bytes / c.big_size
    r.big_upstream_gets = traffic.blob_gets
    r.big_failures = big.failures
    r.big_fetches = big.fetches
    report_failures(sut.label, "big blob", big)

    # Warm: the big blob is cached now; cache the manifest too.
    await warm_manifest(sut.url, c)
    r.cache_status = await asyncio.to_thread(cache_status, sut.url, c)
    blob_url = f"{sut.url}/v2/{NAME}/blobs/{c.big_digest}"
    manifest_url = f"{sut.url}/v2/{NAME}/manifests/{TAG}"
    r.big_size_served = c.big_size
    machine_pids = [p for p in (pid, throttle.pid, upstream_pid) if p is not None]
    for i in range(s.repeats):
        log(
            f"{sut.label}: warm blob, {s.warm_workers} curl loops for {s.warm_seconds:.0f} s"
            f" ({i + 1}/{s.repeats})"
        )
        mark = throttle.mark()
        cpu0, client0 = tree_cpu(pid), children_cpu()
        with CpuWindow(machine_pids) as window:
            warm = await curl_warm(blob_url, s.warm_workers, s.warm_seconds, c.big_size)
        cpu1, client1 = tree_cpu(pid), children_cpu()
        r.other_cpu_share = max(r.other_cpu_share, window.other_share)
        r.steal_cpu += window.steal
        await quiesce(throttle)
        r.warm_cpu_user += cpu1[0] - cpu0[0]
        r.warm_cpu_sys += cpu1[1] - cpu0[1]
        r.warm_client_cpu += client1 - client0
        r.warm_mb_s_runs.append(warm.mb_per_s)
        r.warm_downloads += warm.downloads
        r.warm_failures += warm.failures
        r.warm_upstream_bytes += throttle.since(mark).body_bytes
        for failure in warm.failures[:5]:
            log(f"  FAILURE {sut.label} warm: {failure}")

        log(f"{sut.label}: manifest GETs, {s.manifest_conns} connections ({i + 1}/{s.repeats})")
        mark = throttle.mark()
        cpu0 = tree_cpu(pid)
        with CpuWindow(machine_pids) as window:
            rps = await manifest_rps(manifest_url, s.manifest_conns, s.manifest_seconds)
        cpu1 = tree_cpu(pid)
        r.other_cpu_share = max(r.other_cpu_share, window.other_share)
        r.steal_cpu += window.steal
        await quiesce(throttle)
        r.rps_cpu += sum(cpu1) - sum(cpu0)
        r.rps_runs.append(rps.rps)
        r.rps_tool, r.rps_detail = rps.tool, rps.detail
        r.rps_requests += rps.requests
        r.rps_errors += rps.errors
        r.rps_upstream_requests += throttle.since(mark).requests

    # One verified warm read after all that load: the cached bytes are still right.
    check = await pull_blob(sut.url, NAME, c.big_digest, c.big_size, 1)
    r.verify_failures = check.failures
    report_failures(sut.label, "warm verify", check)
    return r


async def wait_quiet(limit: float, pids: list[int]) -> None:
    """Wait (at most ``limit`` s) until other processes use under 5% of the machine."""
    deadline = time.monotonic() + limit
    while True:
        with CpuWindow(pids) as window:
            await asyncio.sleep(2.0)
        if window.other_share < 0.05:
            return
        if time.monotonic() >= deadline:
            log(f"  machine still busy ({window.other_share:.0%} used by others); measuring anyway")
            return
        log(f"  waiting for a quiet machine ({window.other_share:.0%} used by others)")
        await asyncio.sleep(8.0)


async def quiesce(throttle: Throttle) -> None:
    if not await asyncio.to_thread(throttle.quiesce):
        log("  WARNING: upstream still busy after 120 s; counting what was logged")


async def warm_manifest(base: str, c: Content) -> None:
    async with client_session(1) as session:
        _, err = await fetch_manifest(session, base, NAME, TAG, c.manifest_digest)
    if err is not None:
        log(f"  FAILURE manifest warm-up: {err}")


def cache_status(base: str, c: Content) -> str:
    """How the SUT says it served a cached blob (nginx: X-Cache-Status)."""
    req = urllib.request.Request(f"{base}/v2/{NAME}/blobs/{c.big_digest}", method="HEAD")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return resp.headers.get("X-Cache-Status", "") or f"HTTP {resp.status}"


def report_failures(label: str, what: str, pull: PullResult) -> None:
    for failure in pull.failures[:5]:
        log(f"  FAILURE {label} {what}: {failure}")
    if len(pull.failures) > 5:
        log(f"  ... {len(pull.failures) - 5} more failures")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- reporting ---------------------------------------------------------------------


def table(results: Sequence[SutResult], c: Content, s: Settings) -> str:
    big = f"{c.big_size // MIB} MiB"
    rows: list[tuple[str, Callable[[SutResult], str]]] = []
    for n in s.cold_clients:
        rows.append((f"cold pull, {n} client{'s' if n > 1 else ''}: wall s", _cold_wall(n)))
        rows.append((f"cold pull, {n} client{'s' if n > 1 else ''}: upstream / image", _ratio(n)))
    rows += [
        (
            f"warm {big} blob, {s.warm_workers}x curl: MB/s{_median(s)}",
            lambda r: f"{r.warm_mb_s:,.0f}",
        ),
        (
            "warm blob: server CPU s per GB served (user+sys)",
            lambda r: f"{_per_gb(r.warm_cpu_user + r.warm_cpu_sys, r):.2f}",
        ),
        (
            f"manifest by tag, {s.manifest_conns} conns: req/s{_median(s)}",
            lambda r: f"{r.rps:,.0f}",
        ),
        (
            f"peak RSS, {s.rss_clients}x cold {big} blob: MiB (idle)",
            lambda r: f"{r.rss_hwm_kib / 1024:,.0f} ({r.rss_idle_kib / 1024:,.0f})",
        ),
        (
            f"{s.rss_clients}x cold {big} blob: wall s, upstream / blob",
            lambda r: f"{r.big_wall:.2f}, {r.big_ratio:.2f}",
        ),
        (
            "manifest: server CPU us per request",
            lambda r: f"{r.rps_cpu / r.rps_requests * 1e6:,.0f}" if r.rps_requests else "-",
        ),
        (
            "upstream requests during manifest test",
            lambda r: f"{r.rps_upstream_requests:,}",
        ),
        (
            "others' CPU use during warm/manifest tests (max)",
            lambda r: f"{r.other_cpu_share:.0%}",
        ),
        ("failed / total requests (all tests)", lambda r: "{:,} / {:,}".format(*r.failures())),
    ]
    head = "| | " + " | ".join(r.label for r in results) + " |"
    sep = "|---|" + "---:|" * len(results)
    lines = [head, sep]
    for title, cell in rows:
        cells = [("error" if r.error else cell(r)) for r in results]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median(s: Settings) -> str:
    return f" (median of {s.repeats})" if s.repeats > 1 else ""


def _runs(values: Sequence[float]) -> str:
    return "/".join(f"{v:,.0f}" for v in values)


def _per_gb(seconds: float, r: SutResult) -> float:
    served = r.warm_downloads * r.big_size_served
    return seconds / (served / 1e9) if served else 0.0


def _cold_wall(n: int) -> Callable[[SutResult], str]:
    return lambda r: f"{r.cold[n].wall:.2f}" if n in r.cold else "-"


def _ratio(n: int) -> Callable[[SutResult], str]:
    return lambda r: f"{r.cold[n].ratio:.2f}" if n in r.cold else "-"


def notes(results: Sequence[SutResult], c: Content, s: Settings, upstream_note: str) -> str:
    out = [
        f"- Image: {c.blob_count} blobs (config + {c.blob_count - 1} random layers), "
        f"{c.image_size / MB:.1f} MB with the manifest; big blob {c.big_size / MB:.1f} MB.",
        f"- Upstream: docker-registry behind one nginx throttle per system, "
        f"`limit_rate {s.rate_mb * MB}` (bytes/s) per connection. {upstream_note}.",
    ]
    for r in results:
        if r.error:
            out.append(f"- {r.label}: ERROR {r.error}")
            continue
        spread = ", ".join(
            f"{n}: {cold.fastest_client:.2f}-{cold.slowest_client:.2f} s"
            f" ({cold.upstream_blob_gets} upstream blob GETs)"
            for n, cold in r.cold.items()
        )
        out.append(
            f"- {r.label}: per-client cold pull times {spread}; "
            f"{s.rss_clients}x big blob: {r.big_upstream_gets} upstream blob GETs, "
            f"sampled peak VmRSS {r.rss_sampled_peak_kib / 1024:.0f} MiB; "
            f"warm: {_runs(r.warm_mb_s_runs)} MB/s, {r.warm_downloads} downloads, "
            f"server CPU {r.warm_cpu_user:.1f} s user + "
            f"{r.warm_cpu_sys:.1f} s sys, curl clients {r.warm_client_cpu:.1f} s, "
            f"upstream bytes {r.warm_upstream_bytes:,}, CPU stolen by the hypervisor "
            f"{r.steal_cpu:.1f} s, "
            f"cached blob HEAD says {r.cache_status!r}; "
            f"manifest: {_runs(r.rps_runs)} req/s, {r.rps_requests:,} requests via "
            f"{r.rps_tool} ({r.rps_detail})."
        )
    return "\n".join(out)


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    out = subprocess.run(argv, capture_output=True, text=True, check=False, env=clean_env())
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def _short(version: str) -> str:
    return " ".join(version.split()[:2])


def code_under_test(workdir: Path) -> tuple[Path, str]:
    """Snapshot cacheproxy/ for this run; describe it (commit, local changes, hash)."""
    source = workdir / "cacheproxy-src"
    tree_hash = snapshot_source(ROOT / "cacheproxy", source)
    commit = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "cacheproxy"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    state = " with uncommitted changes" if dirty else ""
    return source, f"commit {commit}{state} (snapshot of cacheproxy/: sha256 {tree_hash})"


def machine(code: str) -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return "\n".join(
        [
            f"- Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Machine: {_version(['nproc'])} CPUs, {cpu}, kernel {platform.release()}",
            f"- cacheproxy: {code}",
            f"- Python {platform.python_version()}, aiohttp {version('aiohttp')}, "
            f"uvloop {version('uvloop')}",
            f"- {_version(['nginx', '-v'])}; {_version(['docker-registry', '--version'])}; "
            f"{_short(_version(['curl', '--version']))}; {_short(_version(['wrk', '--version']))}",
        ]
    )


def write_results(section: str, mode: str) -> None:
    """Replace this mode's section of RESULTS.md (or append it)."""
    begin, end = f"<!-- benchmark:{mode} -->", f"<!-- /benchmark:{mode} -->"
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text)


# --- main --------------------------------------------------------------------------


def build_suts(workdir: Path, throttles: dict[str, Throttle], source: Path) -> dict[str, Sut]:
    suts: dict[str, Sut] = {
        "cacheproxy": CacheproxySut(
            "cacheproxy --loop uvloop",
            workdir / "cacheproxy",
            throttles["cacheproxy"].url,
            "uvloop",
            source,
        ),
        "cacheproxy-asyncio": CacheproxySut(
            "cacheproxy --loop asyncio (default)",
            workdir / "cacheproxy-asyncio",
            throttles["cacheproxy-asyncio"].url,
            "asyncio",
            source,
        ),
        "distribution": DistributionSut(
            "distribution proxy", workdir / "distribution", throttles["distribution"].url
        ),
        "nginx": NginxCacheSut(
            "nginx proxy_cache", workdir / "nginx", f"127.0.0.1:{throttles['nginx'].port}"
        ),
    }
    return suts


SUT_KEYS = ("cacheproxy", "cacheproxy-asyncio", "distribution", "nginx")


async def run(args: argparse.Namespace) -> int:
    s = QUICK if args.quick else FULL
    section_key, title = s.mode, f"{s.mode.capitalize()} run"
    if args.rate is not None and args.rate != s.rate_mb:
        s = Settings(**{**asdict(s), "rate_mb": args.rate})
        section_key += f"-rate{args.rate}"
        title += f", upstream throttled to {args.rate} MB/s per connection"
    keys = [k for k in SUT_KEYS if not args.only or k in args.only]
    workdir: Path = args.workdir
    upstream = RegistryProcess(workdir / "upstream")
    throttles: dict[str, Throttle] = {}
    suts: dict[str, Sut] = {}
    t0 = time.monotonic()
    try:
        source, code = code_under_test(workdir)
        log(f"{s.mode} run in {workdir}: cacheproxy {code}")
        log("starting the upstream registry, pushing content")
        upstream.start()
        content = await push_content(upstream, s)
        log(f"pushed image {content.image_size / MB:.1f} MB, blob {content.big_size / MB:.1f} MB")
        for key in SUT_KEYS:
            throttles[key] = Throttle(
                workdir / f"throttle-{key}", upstream.host, str(s.rate_mb * MB)
            )
            throttles[key].start()
        upstream_note = check_upstream(throttles[keys[0]], content)
        log(upstream_note)
        suts = build_suts(workdir, throttles, source)
        results: list[SutResult] = []
        for key in keys:
            sut = suts[key]
            if args.wait_quiet:
                ours = [p for p in (upstream.pid, *(t.pid for t in throttles.values())) if p]
                await wait_quiet(args.wait_quiet, ours)
            try:
                results.append(await measure(sut, key, throttles[key], upstream.pid, content, s))
            except Exception as exc:  # one broken system must not hide the others
                log(f"{sut.label}: ERROR {type(exc).__name__}: {exc}")
                results.append(SutResult(key, sut.label, error=f"{type(exc).__name__}: {exc}"))
            finally:
                await asyncio.to_thread(sut.stop)
        text = table(results, content, s)
        section = "\n\n".join(
            [
                f"## {title}",
                f"Command: `python3 -m benchmarks.run{_flags(args)}`"
                f" ({time.monotonic() - t0:.0f} s)",
                machine(code),
                text,
                notes(results, content, s, upstream_note),
            ]
        )
        print(text)
        print()
        print(notes(results, content, s, upstream_note))
        (workdir / "results.json").write_text(
            json.dumps([asdict(r) for r in results], indent=2, default=str)
        )
        if args.write:
            write_results(section, section_key)
            log(f"wrote {RESULTS}")
        failed = any(r.error or r.failures()[0] for r in results)
        return 1 if failed else 0
    finally:
        for sut in suts.values():
            sut.stop()
        for throttle in throttles.values():
            throttle.terminate()
        upstream.stop()
        if not args.keep:
            for sub in ("upstream/data", "cacheproxy/cache", "cacheproxy-asyncio/cache"):
                shutil.rmtree(workdir / sub, ignore_errors=True)
            shutil.rmtree(workdir / "distribution" / "data", ignore_errors=True)
            shutil.rmtree(workdir / "nginx" / "cache", ignore_errors=True)
            # A second copy of the package in the tree would confuse mypy and friends.
            shutil.rmtree(workdir / "cacheproxy-src", ignore_errors=True)


def _flags(args: argparse.Namespace) -> str:
    flags = " --quick" if args.quick else ""
    return flags + (f" --rate {args.rate}" if args.rate is not None else "")


def run_in(workdir: Path, benchmark: Coroutine[Any, Any, int]) -> int:
    """Run ``benchmark`` in a fresh scratch ``workdir``, on uvloop (the clients' loop:
    it leaves more of the CPUs to the servers); 130 on Ctrl-C."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        import uvloop

        return uvloop.run(benchmark)
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller content, shorter runs")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--rate", type=int, help="throttle, MB/s per upstream connection")
    parser.add_argument("--only", nargs="+", choices=SUT_KEYS, help="systems to measure")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "benchmarks" / "out", help="scratch directory"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each system, wait up to this long for other processes to go quiet",
    )
    parser.add_argument("--keep", action="store_true", help="keep caches and upstream data")
    args = parser.parse_args(argv)
    return run_in(args.workdir, run(args))


if __name__ == "__main__":
    sys.exit(main())
