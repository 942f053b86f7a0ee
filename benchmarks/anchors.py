"""The processes a benchmark run starts: throttles, cacheproxy and the two anchors.

Every server binds 127.0.0.1 only, lives in its own directory under the run's work
directory, is started with ``start_new_session`` and is stopped by its own PID.

- :class:`Throttle`: nginx as a reverse proxy in front of the upstream registry with a
  per-connection ``limit_rate`` and an access log of ``$request $status
  $body_bytes_sent``, so the bytes one system under test pulls can be counted.
- :class:`CacheproxySut`: ``cacheproxy serve`` (default loop or ``--loop asyncio``).
- :class:`DistributionSut`: distribution's ``docker-registry`` in proxy mode.
- :class:`NginxCacheSut`: nginx ``proxy_cache`` with ``proxy_cache_lock``.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from tests.support.ports import free_port
from tests.support.process import stop_pids, stop_process
from tests.support.registry import RegistryProcess
from tests.support.waiting import eventually_sync

__all__ = [
    "CacheproxySut",
    "DistributionSut",
    "NginxCacheSut",
    "NginxProcess",
    "Sut",
    "Throttle",
    "child_pids",
    "clean_env",
    "reset",
    "snapshot_source",
]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# One opener for every readiness probe: loopback only, never an http_proxy from the env.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def clean_env() -> dict[str, str]:
    """The environment for children: no proxies, no CACHEPROXY_* settings leaking in."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("CACHEPROXY_")
    }


def wait_http(url: str, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    """Poll ``url`` until it answers any HTTP status; fail if ``proc`` dies first."""

    def answers() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}:\n{tail(log)}")
        try:
            with _OPENER.open(url, timeout=1.0):
                return True
        except urllib.error.HTTPError as exc:
            exc.close()
            return True
        except OSError:
            return False

    try:
        eventually_sync(answers, timeout=START_TIMEOUT, interval=0.05, what=f"{url} answering")
    except AssertionError as exc:
        raise TimeoutError(f"{exc}:\n{tail(log)}") from None


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} missing)"


class Owned:
    """A subprocess we started, stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def spawn(
        self, argv: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**clean_env(), **(env or {})},
            start_new_session=True,
        )
        return self.proc

    def terminate(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            children = child_pids(proc.pid)
            stop_process(proc, STOP_TIMEOUT)
            # nginx workers exit with their master; make sure, by their own PIDs.
            stop_pids(children, STOP_TIMEOUT)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def child_pids(root: int) -> list[int]:
    """Every descendant of ``root`` (scans /proc for parent PIDs)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


# --- nginx ------------------------------------------------------------------------


def _user_line() -> str:
    # A root master would switch its workers to "nobody", who cannot write our dirs.
    if os.geteuid() != 0:
        return ""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    return f"user {user} {group};"


def _nginx_head(workdir: Path, workers: str) -> str:
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
{_user_line()}
events {{ worker_connections 4096; }}
"""


def _http_common(workdir: Path) -> str:
    tmp = workdir / "tmp"
    return f"""\
    access_log off;
    client_body_temp_path {tmp}/client;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # Exactly the fields the benchmark counts: what each request took from upstream.
    log_format upstream '$msec "$request" "$http_range" $status $body_bytes_sent';
    keepalive_requests 100000;
    client_max_body_size 0;
"""


def throttle_conf(workdir: Path, port: int, upstream: str, rate: str, ranges: bool = True) -> str:
    """nginx in front of the upstream registry, each connection limited to ``rate``.

    ``ranges=False``: an upstream that ignores ``Range`` (every GET answered 200 with
    the whole blob), as some storage behind a registry does.
    """
    # Range never reaches the registry, and nginx does not cut ranges itself.
    no_ranges = 'proxy_set_header Range "";\n            max_ranges 0;' if not ranges else ""
    return (
        _nginx_head(workdir, "1")
        + f"""\
http {{
{_http_common(workdir)}
    upstream registry {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        access_log {workdir}/access.log upstream;
        location = /nginx_status {{
            stub_status;
            access_log off;
        }}
        location / {{
            proxy_pass http://registry;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # limit_rate is only enforced on buffered proxying; with no temp file the
            # buffers are the only slack, so the upstream is read as the SUT reads.
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            proxy_request_buffering off;
            proxy_buffer_size 256k;
            proxy_buffers 8 256k;
            proxy_busy_buffers_size 512k;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
            limit_rate {rate};
            {no_ranges}
        }}
    }}
}}
"""
    )


def cache_conf(workdir: Path, port: int, upstream: str) -> str:
    """nginx ``proxy_cache`` as a pull-through registry cache (cache key: the URI)."""
    return (
        _nginx_head(workdir, "auto")
        + f"""\
http {{
{_http_common(workdir)}
    sendfile on;
    tcp_nopush on;
    proxy_cache_path {workdir}/cache levels=1:2 keys_zone=registry:16m
                     max_size=50g inactive=1y use_temp_path=off;
    upstream throttle {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        # No access log, like cacheproxy as the benchmark runs it.
        location / {{
            proxy_pass http://throttle;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering on;
            proxy_cache registry;
            proxy_cache_key $uri;
            proxy_cache_valid 200 206 1y;
            # One upstream request per key: the others wait for the cached copy ...
            proxy_cache_lock on;
            # ... however long the fill takes (defaults, 5 s each, would let a slow
            # fill start a second upstream GET, or serve waiters uncached).
            proxy_cache_lock_timeout 600s;
            proxy_cache_lock_age 600s;
            # proxy_max_temp_file_size does not apply to responses being cached: the
            # whole body goes to the cache's temp file, whatever its size.
            proxy_read_timeout 600s;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""
    )


class NginxProcess(Owned):
    """One nginx master (and its workers) running a generated config."""

    def __init__(self, workdir: Path, port: int) -> None:
        super().__init__()
        self.workdir = workdir
        self.port = port
        self.conf_path = workdir / "nginx.conf"
        self.error_log = workdir / "error.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, conf: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("client", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(conf)
        argv = [NGINX, "-p", str(self.workdir), "-c", str(self.conf_path), "-e", "stderr"]
        check = subprocess.run(
            [*argv, "-t"], capture_output=True, text=True, env=clean_env(), check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed for {self.conf_path}:\n{check.stderr}")
        proc = self.spawn(argv, self.workdir / "nginx.stderr", self.workdir)
        wait_http(f"{self.url}/v2/", proc, self.workdir / "nginx.stderr")


@dataclass(frozen=True)
class LogMark:
    """A position in a throttle's access log."""

    offset: int


@dataclass(frozen=True)
class Logged:
    """One request in a throttle's access log."""

    request: str  # "GET /v2/... HTTP/1.1"
    range: str | None
    status: int
    body_bytes: int


@dataclass(frozen=True)
class UpstreamTraffic:
    """What a throttle logged between two marks."""

    requests: int
    body_bytes: int
    blob_gets: int
    statuses: dict[int, int]
    #: Blob GETs that asked for a range.
    ranged_gets: int = 0
    lines: tuple[Logged, ...] = ()

    def blob(self, digest: str) -> list[Logged]:
        """The GETs of one blob."""
        return [
            line
            for line in self.lines
            if line.request.startswith("GET ") and digest in line.request
        ]


class Throttle(NginxProcess):
    """The upstream as a system under test sees it: rate-limited, every byte logged."""

    def __init__(
        self, workdir: Path, upstream_hostport: str, rate: str, ranges: bool = True
    ) -> None:
        super().__init__(workdir, free_port())
        self.upstream_hostport = upstream_hostport
        self.rate = rate
        self.ranges = ranges
        self.access_log = workdir / "access.log"

    def start(self) -> None:
        conf = throttle_conf(
            self.workdir, self.port, self.upstream_hostport, self.rate, self.ranges
        )
        self.run(conf)

    def mark(self) -> LogMark:
        try:
            return LogMark(self.access_log.stat().st_size)
        except FileNotFoundError:
            return LogMark(0)

    def active_transfers(self) -> int:
        """Requests in flight, from stub_status (minus the status request itself)."""
        with _OPENER.open(f"{self.url}/nginx_status", timeout=5.0) as resp:
            text = resp.read().decode()
        match = re.search(r"Reading: (\d+) Writing: (\d+)", text)
        if match is None:
            raise RuntimeError(f"unexpected stub_status: {text!r}")
        return int(match.group(1)) + int(match.group(2)) - 1

    def quiesce(self, timeout: float = 120.0) -> bool:
        """Wait until no request is in flight (a proxy's background fill included)."""
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while time.monotonic() < deadline:
            if self.active_transfers() == 0:
                idle_since = idle_since or time.monotonic()
                # Stay idle for a moment: a proxy may start its background fetch late.
                if time.monotonic() - idle_since >= 0.3:
                    return True
            else:
                idle_since = None
            time.sleep(0.05)
        return False

    def since(self, mark: LogMark) -> UpstreamTraffic:
        with self.access_log.open("rb") as fh:
            fh.seek(mark.offset)
            lines = fh.read().decode(errors="replace").splitlines()
        requests = body = blob_gets = ranged = 0
        statuses: dict[int, int] = {}
        logged = []
        for line in lines:
            # $msec "$request" "$http_range" $status $body_bytes_sent
            head, _, counts = line.rpartition('" ')
            status_s, _, sent_s = counts.partition(" ")
            request, _, wanted = head.partition('"')[2].partition('" "')
            status, sent = int(status_s), int(sent_s)
            requests += 1
            body += sent
            statuses[status] = statuses.get(status, 0) + 1
            if request.startswith("GET ") and "/blobs/sha256:" in request:
                blob_gets += 1
                ranged += wanted not in ("", "-")
            logged.append(Logged(request, None if wanted in ("", "-") else wanted, status, sent))
        return UpstreamTraffic(requests, body, blob_gets, statuses, ranged, tuple(logged))


# --- systems under test -----------------------------------------------------------


class Sut(Protocol):
    """A system under test: a pull-through cache with a cache we can wipe."""

    label: str

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wipe(self) -> None: ...


def reset(sut: Sut) -> None:
    """Restart ``sut`` with an empty cache."""
    sut.stop()
    sut.wipe()
    sut.start()


def snapshot_source(source: Path, dest: Path) -> str:
    """Copy the ``cacheproxy`` package to ``dest/cacheproxy``; return a hash of its files.

    Every cacheproxy process of a run imports this copy (``PYTHONPATH``), so edits to
    the working tree while a run is going cannot change the code under test halfway.
    """
    target = dest / "cacheproxy"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = hashlib.sha256()
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(target)).encode() + b"\0" + path.read_bytes())
    check = subprocess.run(
        [sys.executable, "-c", "import cacheproxy; print(cacheproxy.__file__)"],
        capture_output=True,
        text=True,
        cwd=dest,
        env={**clean_env(), "PYTHONPATH": str(dest)},
        check=False,
    )
    if not check.stdout.strip().startswith(str(target)):
        raise RuntimeError(f"the snapshot is not what Python imports: {check.stdout}{check.stderr}")
    return digest.hexdigest()[:12]


class CacheproxySut(Owned):
    """``cacheproxy serve`` against the throttled upstream (from ``source`` if given)."""

    def __init__(
        self,
        label: str,
        workdir: Path,
        upstream_url: str,
        loop: str | None,
        source: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.label = label
        #: Settings as CACHEPROXY_* variables (e.g. CACHEPROXY_UPSTREAM_SEGMENTS).
        self.env = dict(env or {})
        self.workdir = workdir
        self.upstream_url = upstream_url
        self.loop = loop
        self.source = source
        self.port = free_port()
        self.cache_dir = workdir / "cache"
        self.log = workdir / "cacheproxy.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        # python -m cacheproxy is the console script's entry point (cli.main).
        argv = [sys.executable, "-m", "cacheproxy", "serve", "--upstream", self.upstream_url]
        argv += ["--cache-dir", str(self.cache_dir), "--listen", f"127.0.0.1:{self.port}"]
        argv += ["--log-level", "WARNING"]
        if self.loop is not None:
            argv += ["--loop", self.loop]
        return argv

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Without a snapshot, the installed (editable) package runs.
        env = dict(self.env)
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        proc = self.spawn(self.argv(), self.log, self.workdir, env)
        wait_http(f"{self.url}/v2/", proc, self.log)

    def stop(self) -> None:
        self.terminate()

    def wipe(self) -> None:
        shutil.rmtree(self.cache_dir, ignore_errors=True)


class DistributionSut:
    """distribution (``docker-registry``) with ``proxy: remoteurl:`` the throttle."""

    def __init__(self, label: str, workdir: Path, upstream_url: str) -> None:
        self.label = label
        self.registry = RegistryProcess(workdir, proxy_remoteurl=upstream_url)

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def pid(self) -> int | None:
        return self.registry.pid

    def start(self) -> None:
        self.registry.start()

    def stop(self) -> None:
        self.registry.stop()

    def wipe(self) -> None:
        shutil.rmtree(self.registry.data_dir, ignore_errors=True)


class NginxCacheSut(NginxProcess):
    """nginx ``proxy_cache`` in front of the throttled upstream."""

    def __init__(self, label: str, workdir: Path, upstream_hostport: str) -> None:
        super().__init__(workdir, free_port())
        self.label = label
        self.upstream_hostport = upstream_hostport

    def start(self) -> None:
        self.run(cache_conf(self.workdir, self.port, self.upstream_hostport))

    def stop(self) -> None:
        self.terminate()

    def wipe(self) -> None:
        shutil.rmtree(self.workdir / "cache", ignore_errors=True)
        shutil.rmtree(self.workdir / "tmp", ignore_errors=True)
