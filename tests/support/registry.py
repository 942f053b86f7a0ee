"""A real upstream registry for tests: Debian's ``docker-registry`` (distribution 2.8).

:class:`RegistryProcess` writes a distribution config into its own directory, starts
``docker-registry serve`` on a free loopback port and waits until ``GET /v2/`` answers.
It can be stopped and started again on the same port and storage, so a test can take the
upstream away mid-flight and bring it back.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.support.waiting import eventually_sync

DOCKER_REGISTRY = "docker-registry"

#: How long :meth:`RegistryProcess.start` waits for ``GET /v2/`` to answer.
START_TIMEOUT = 15.0
#: How long :meth:`RegistryProcess.stop` waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT = 10.0

# Bind-race retries: free_port() releases the port before the registry binds it, so
# another process may take it in between. Only a start on a port we chose is retried.
_PORT_ATTEMPTS = 3


def _yaml(value: Any, indent: int = 0) -> str:
    """Render nested dicts of scalars as block YAML.

    Scalars are written as JSON, which YAML 1.2 (and yaml.v2, used by distribution)
    reads as flow scalars, so no string ever needs hand-quoting.
    """
    pad = "  " * indent
    lines: list[str] = []
    for key, item in value.items():
        if isinstance(item, Mapping):
            lines.append(f"{pad}{key}:")
            lines.append(_yaml(item, indent + 1))
        else:
            lines.append(f"{pad}{key}: {json.dumps(item)}")
    return "\n".join(line for line in lines if line)


def write_htpasswd(path: Path, user: str, password: str) -> None:
    """Write an htpasswd file with one bcrypt entry, the only hash distribution accepts."""
    try:
        import bcrypt
    except ImportError as exc:  # pragma: no cover - depends on the test extras
        raise RuntimeError("htpasswd auth needs the 'bcrypt' module (pip install bcrypt)") from exc
    # Cost 5 keeps each login cheap; Go's bcrypt accepts any cost >= 4 and the 2b prefix.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{user}:{hashed}\n")


class RegistryProcess:
    """A ``docker-registry serve`` subprocess bound to 127.0.0.1, owned by the test.

    Layout of *workdir*: ``config.yml``, ``data/`` (filesystem storage),
    ``registry.log`` (stderr: app log) and ``access.log`` (stdout: distribution writes
    its combined access log there). Attributes that shape the config (``htpasswd``,
    ``token_auth``, ``proxy_remoteurl``) may be changed between :meth:`stop` and
    :meth:`start`; the config is rewritten on every start.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        htpasswd: tuple[str, str] | None = None,
        token_auth: Mapping[str, str] | None = None,
        proxy_remoteurl: str | None = None,
        proxy_credentials: tuple[str, str] | None = None,
        binary: str = DOCKER_REGISTRY,
        foreign_layers: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        self.access_log_path = self.workdir / "access.log"
        self.bind_host = host
        self.htpasswd = htpasswd
        self.token_auth = dict(token_auth) if token_auth is not None else None
        self.proxy_remoteurl = proxy_remoteurl
        self.proxy_credentials = proxy_credentials
        self.binary = binary
        #: Accept layers with ``urls`` (foreign, non-distributable): distribution
        #: takes them only when its manifest URL allow list says so.
        self.foreign_layers = foreign_layers
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(host)
        # Upload state (the _state query parameter) is signed with this secret; a fixed
        # one per instance keeps uploads valid across stop()/start().
        self._secret = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def host(self) -> str:
        """``host:port`` as used in image references (``127.0.0.1:PORT/name:tag``)."""
        return f"{self.bind_host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        """PID of the running registry, or None when stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the subprocess we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def config(self) -> dict[str, Any]:
        """The distribution configuration the next :meth:`start` will write."""
        cfg: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.data_dir)},
                "delete": {"enabled": True},
                # The purger would otherwise walk _uploads on every start.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": self._secret},
        }
        if self.foreign_layers:
            cfg["validation"] = {"manifests": {"urls": {"allow": ["^https?://"]}}}
        if self.htpasswd is not None:
            htpasswd_path = self.workdir / "htpasswd"
            cfg["auth"] = {"htpasswd": {"realm": "cacheproxy-test", "path": str(htpasswd_path)}}
        elif self.token_auth is not None:
            cfg["auth"] = {"token": dict(self.token_auth)}
        if self.proxy_remoteurl is not None:
            proxy: dict[str, str] = {"remoteurl": self.proxy_remoteurl}
            if self.proxy_credentials is not None:
                proxy["username"], proxy["password"] = self.proxy_credentials
            cfg["proxy"] = proxy
        return cfg

    def start(self) -> None:
        """Start the registry (again) and wait until ``GET /v2/`` answers."""
        if self.running:
            return
        if shutil.which(self.binary) is None:
            raise RuntimeError(
                f"{self.binary!r} not found on PATH (apt-get install docker-registry)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if self.htpasswd is not None:
            write_htpasswd(self.workdir / "htpasswd", *self.htpasswd)
        for attempt in range(_PORT_ATTEMPTS):
            self.config_path.write_text(_yaml(self.config()) + "\n")
            self._spawn()
            try:
                self._wait_ready()
                return
            except _BindFailed:
                self._reap()
                if self._fixed_port or attempt == _PORT_ATTEMPTS - 1:
                    raise RuntimeError(
                        f"registry could not bind {self.host}:\n{self.log_tail()}"
                    ) from None
                self.port = free_port(self.bind_host)
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """SIGTERM the registry we started, SIGKILL it after ``STOP_TIMEOUT``; idempotent."""
        if self._proc is not None:
            # Signal by PID, and only the PID we spawned.
            stop_process(self._proc, STOP_TIMEOUT)
        self._reap()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of ``registry.log``, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no registry.log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RegistryProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RegistryProcess(url={self.url!r}, pid={self.pid})"

    def _spawn(self) -> None:
        stdout = self.access_log_path.open("ab")
        stderr = self.log_path.open("ab")
        self._logs = [stdout, stderr]
        self._proc = subprocess.Popen(
            [self.binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=self.workdir,
            # Own process group: a Ctrl-C on the test run does not race our own stop().
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        proc = self._proc
        # Loopback only: never let an http_proxy from the environment in.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def answers() -> bool:
            if proc.poll() is not None:
                if "address already in use" in self.log_tail(lines=200):
                    raise _BindFailed
                raise RuntimeError(f"registry exited with {proc.returncode}:\n{self.log_tail()}")
            try:
                with opener.open(f"{self.url}/v2/", timeout=1.0):
                    return True
            except urllib.error.HTTPError as exc:
                # 401 from an auth-enabled registry still means it is serving.
                exc.close()
                return True
            except OSError:
                return False

        try:
            eventually_sync(
                answers, timeout=START_TIMEOUT, interval=0.05, what=f"the registry at {self.url}"
            )
        except AssertionError as exc:
            raise TimeoutError(f"{exc}:\n{self.log_tail()}") from None

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            stop_process(self._proc, STOP_TIMEOUT)
        self._proc = None
        for log in self._logs:
            log.close()
        self._logs = []


class _BindFailed(Exception):
    """The registry exited because its port was taken."""
