"""Load clients: verifying pullers (aiohttp), curl for warm throughput, wrk for manifests.

- :func:`cold_pull` runs N clients at once; each one, like containerd or docker, fetches
  the manifest by tag and then its blobs (up to 3 at a time), reading and discarding
  the bytes while it checks every blob's size and sha256 against the manifest.
- :func:`pull_blob` runs N verifying clients of one blob.
- :func:`curl_warm` runs N loops of ``curl -s -o /dev/null`` (no verification, so the
  client's CPU goes to moving bytes, not hashing them) for a fixed time.
- :func:`manifest_rps` runs ``wrk`` (or, without it, an aiohttp keep-alive loop).
- :class:`RssSampler` samples the summed VmRSS of a process tree; :func:`tree_kib` reads
  any ``/proc/PID/status`` field summed over a process and its descendants.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support.process import stop_async_process

from .anchors import child_pids, clean_env

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
#: Blobs one client fetches at once (containerd's and docker's default is 3).
PER_CLIENT_PARALLEL = 3
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=10, sock_read=120)
#: Seconds a batch of clients may take before the stragglers count as hung.
BATCH_BUDGET = 300.0


@dataclass
class PullResult:
    """N clients' pulls: wall time of the whole batch, and every failure seen."""

    clients: int
    wall: float = 0.0
    fetches: int = 0
    bytes: int = 0
    failures: list[str] = field(default_factory=list)
    client_times: list[float] = field(default_factory=list)
    #: Seconds from sending each blob GET to its first body byte.
    first_bytes: list[float] = field(default_factory=list)
    #: Seconds from each client's start to the first byte it got (of the manifest).
    client_first_bytes: list[float] = field(default_factory=list)


def client_session(parallel: int) -> aiohttp.ClientSession:
    # One session per client: its own connections, as separate machines would have.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=parallel),
        timeout=FETCH_TIMEOUT,
        auto_decompress=False,
        read_bufsize=1 << 20,
    )


async def fetch_blob(
    session: aiohttp.ClientSession,
    base: str,
    name: str,
    digest: str,
    size: int,
    first_bytes: list[float] | None = None,
) -> tuple[int, str | None]:
    """GET one blob, hash it; return (bytes read, failure or None). Appends the
    seconds to the first body byte to ``first_bytes``."""
    hasher = hashlib.sha256()
    got = 0
    t0 = time.perf_counter()
    try:
        async with session.get(f"{base}/v2/{name}/blobs/{digest}") as resp:
            if resp.status != 200:
                return 0, f"{digest[:19]}: HTTP {resp.status}"
            async for chunk in resp.content.iter_any():
                if not got and first_bytes is not None:
                    first_bytes.append(time.perf_counter() - t0)
                hasher.update(chunk)
                got += len(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return got, f"{digest[:19]}: {type(exc).__name__}: {exc}"
    if got != size:
        return got, f"{digest[:19]}: {got} bytes, expected {size}"
    if "sha256:" + hasher.hexdigest() != digest:
        return got, f"{digest[:19]}: WRONG DIGEST sha256:{hasher.hexdigest()[:12]}"
    return got, None


async def fetch_manifest(
    session: aiohttp.ClientSession,
    base: str,
    name: str,
    tag: str,
    digest: str,
    first_byte: list[float] | None = None,
) -> tuple[bytes | None, str | None]:
    """GET the manifest by tag; check it is the pushed one. Appends the seconds to
    its first body byte to ``first_byte``."""
    t0 = time.perf_counter()
    try:
        async with session.get(
            f"{base}/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}
        ) as resp:
            body = await resp.content.readany()
            if first_byte is not None:
                first_byte.append(time.perf_counter() - t0)
            body += await resp.read()
            if resp.status != 200:
                return None, f"manifest: HTTP {resp.status}: {body[:200]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return None, f"manifest: {type(exc).__name__}: {exc}"
    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        return None, "manifest: WRONG DIGEST"
    return body, None


async def _one_client(
    base: str, name: str, tag: str, digest: str, result: PullResult, start: asyncio.Event
) -> None:
    async with client_session(PER_CLIENT_PARALLEL) as session:
        await start.wait()
        t0 = time.perf_counter()
        body, err = await fetch_manifest(
            session, base, name, tag, digest, result.client_first_bytes
        )
        result.fetches += 1
        if err is not None or body is None:
            result.failures.append(err or "manifest: empty")
            return
        result.bytes += len(body)
        doc = json.loads(body)
        blobs = [doc["config"], *doc["layers"]]
        gate = asyncio.Semaphore(PER_CLIENT_PARALLEL)

        async def one(desc: dict[str, object]) -> None:
            async with gate:
                got, err = await fetch_blob(
                    session,
                    base,
                    name,
                    str(desc["digest"]),
                    int(str(desc["size"])),
                    result.first_bytes,
                )
            result.fetches += 1
            result.bytes += got
            if err is not None:
                result.failures.append(err)

        await asyncio.gather(*(one(d) for d in blobs))
        result.client_times.append(time.perf_counter() - t0)


async def cold_pull(base: str, name: str, tag: str, digest: str, clients: int) -> PullResult:
    """``clients`` concurrent pulls of ``name:tag`` (manifest, then every blob)."""
    result = PullResult(clients)
    start = asyncio.Event()
    tasks = [
        asyncio.create_task(_one_client(base, name, tag, digest, result, start))
        for _ in range(clients)
    ]
    await asyncio.sleep(0.2)  # let every client open its session first
    t0 = time.perf_counter()
    start.set()
    await _gather_bounded(tasks, result)
    result.wall = time.perf_counter() - t0
    return result


async def pull_blob(base: str, name: str, digest: str, size: int, clients: int) -> PullResult:
    """``clients`` concurrent verifying GETs of one blob."""
    result = PullResult(clients)
    start = asyncio.Event()

    async def client() -> None:
        async with client_session(1) as session:
            await start.wait()
            t0 = time.perf_counter()
            got, err = await fetch_blob(session, base, name, digest, size, result.first_bytes)
            result.fetches += 1
            result.bytes += got
            if err is not None:
                result.failures.append(err)
            result.client_times.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    start.set()
    await _gather_bounded(tasks, result)
    result.wall = time.perf_counter() - t0
    return result


async def _gather_bounded(tasks: list[asyncio.Task[None]], result: PullResult) -> None:
    done, pending = await asyncio.wait(tasks, timeout=BATCH_BUDGET)
    for task in pending:
        task.cancel()
        result.failures.append(f"client still running after {BATCH_BUDGET:.0f}s (hang?)")
    for task in done:
        exc = task.exception()
        if exc is not None:
            result.failures.append(f"client crashed: {type(exc).__name__}: {exc}")
    if pending:
        await asyncio.wait(pending, timeout=10)


# --- warm throughput: curl ---------------------------------------------------------


@dataclass
class WarmResult:
    """Aggregate throughput of N curl loops."""

    workers: int
    seconds: float
    downloads: int
    bytes: int
    failures: list[str]

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


async def _run(
    argv: list[str],
    # The child is killed by its PID when this passes, which asyncio.timeout alone
    # around the call would not do.
    timeout: float,  # noqa: ASYNC109
) -> tuple[int, str]:
    """Run argv, return (exit code, stdout); kill it by PID when it overruns."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=clean_env(),
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except BaseException:
        with contextlib.suppress(Exception):
            await stop_async_process(proc)
            await asyncio.wait_for(proc.communicate(), 10)
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def curl_warm(url: str, workers: int, duration: float, size: int) -> WarmResult:
    """``workers`` loops of ``curl -s -o /dev/null URL`` until ``duration`` has passed."""
    if shutil.which("curl") is None:
        raise RuntimeError("curl not found")
    failures: list[str] = []
    counts = {"downloads": 0, "bytes": 0}
    t0 = time.perf_counter()
    deadline = t0 + duration
    max_rounds = 10_000  # a bound even if every curl failed instantly

    async def worker() -> None:
        for _ in range(max_rounds):
            if time.perf_counter() >= deadline:
                return
            argv = ["curl", "-s", "-o", "/dev/null", "--noproxy", "*"]
            argv += ["-w", "%{http_code} %{size_download}", "--max-time", "300", url]
            code, out = await _run(argv, 320)
            status, _, got = out.partition(" ")
            if code != 0 or status != "200" or int(got or 0) != size:
                failures.append(f"curl exit {code}, HTTP {status}, {got} bytes")
                await asyncio.sleep(0.1)
                continue
            counts["downloads"] += 1
            counts["bytes"] += size

    await asyncio.gather(*(worker() for _ in range(workers)))
    seconds = time.perf_counter() - t0
    return WarmResult(workers, seconds, counts["downloads"], counts["bytes"], failures)


# --- manifest requests/s -----------------------------------------------------------


@dataclass
class RpsResult:
    tool: str
    rps: float
    requests: int
    errors: int
    detail: str


async def manifest_rps(url: str, connections: int, duration: float) -> RpsResult:
    """Requests/s of GETs of ``url`` (a manifest by tag) over keep-alive connections."""
    if shutil.which("wrk") is not None:
        return await _wrk(url, connections, duration)
    return await _aiohttp_rps(url, connections, duration)


async def _wrk(url: str, connections: int, duration: float) -> RpsResult:
    threads = min(2, connections)
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:.0f}s"]
    argv += ["-H", f"Accept: {MANIFEST_ACCEPT}", "--timeout", "10s", url]
    code, out = await _run(argv, duration + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if code != 0 or rps is None or total is None:
        return RpsResult("wrk", 0.0, 0, 1, f"wrk exit {code}: {out[-500:]}")
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    detail = f"latency avg {latency.group(1)}" if latency else ""
    return RpsResult("wrk", float(rps.group(1)), int(total.group(1)), errors, detail)


async def _aiohttp_rps(url: str, connections: int, duration: float) -> RpsResult:
    counts = {"ok": 0, "err": 0}
    deadline = time.perf_counter() + duration
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), timeout=FETCH_TIMEOUT
    ) as session:

        async def loop() -> None:
            for _ in range(10_000_000):
                if time.perf_counter() >= deadline:
                    return
                try:
                    async with session.get(url, headers={"Accept": MANIFEST_ACCEPT}) as resp:
                        await resp.read()
                        counts["ok" if resp.status == 200 else "err"] += 1
                except aiohttp.ClientError:
                    counts["err"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        seconds = time.perf_counter() - t0
    total = counts["ok"] + counts["err"]
    return RpsResult("aiohttp", counts["ok"] / seconds, total, counts["err"], "")


# --- memory ------------------------------------------------------------------------


def _status_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def tree_kib(root: int, key: str) -> int:
    """``key`` (VmRSS, VmHWM, ...) of ``root`` plus all its descendants, in KiB."""
    return sum(_status_kib(pid, key) for pid in [root, *child_pids(root)])


def tree_cpu(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by ``root`` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in [root, *child_pids(root)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # After the command: state is field 3, utime field 14, stime field 15 (proc(5)).
        user += int(fields[11])
        system += int(fields[12])
    return user / tick, system / tick


def children_cpu() -> float:
    """CPU seconds of every reaped child of this process (the curl and wrk clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine_busy() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _own_cpu(pids: list[int]) -> float:
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    own = self_usage.ru_utime + self_usage.ru_stime + children_cpu()
    return own + sum(sum(tree_cpu(pid)) for pid in pids)


class CpuWindow:
    """How the machine's CPU was spent during a measurement window.

    ``ours`` is the benchmark's: this process, its reaped clients and the process trees
    in ``pids`` (the server, its throttle, the upstream). ``other`` is everything else
    the kernel counted as busy (other people's processes, and kernel threads such as
    ksoftirqd), the measure of how much the run was disturbed.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.wall = self.ours = self.other = self.steal = 0.0

    def __enter__(self) -> CpuWindow:
        self._t0 = time.perf_counter()
        self._busy0, self._steal0 = _machine_busy()
        self._own0 = _own_cpu(self.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        busy, steal = _machine_busy()
        self.wall = time.perf_counter() - self._t0
        self.ours = _own_cpu(self.pids) - self._own0
        self.other = max(0.0, busy - self._busy0 - self.ours)
        self.steal = steal - self._steal0

    @property
    def other_share(self) -> float:
        """``other`` as a fraction of all CPUs over the window."""
        cpus = os.cpu_count() or 1
        return self.other / (self.wall * cpus) if self.wall else 0.0


class RssSampler:
    """Samples the summed VmRSS of a process tree every ``interval`` seconds."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak_kib = 0
        self._pids = [root, *child_pids(root)]  # nginx forks its workers at start only
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            rss = sum(_status_kib(pid, "VmRSS") for pid in self._pids)
            self.peak_kib = max(self.peak_kib, rss)
            await asyncio.sleep(self.interval)
