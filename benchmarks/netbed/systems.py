"""The processes of the bed, each started inside a namespace and stopped by its PID.

- :class:`Upstream`: Debian's ``docker-registry`` serving the image (the upstream).
- :func:`cacheproxy_node`: ``cacheproxy serve`` in cluster mode (static ``--peer``
  list, shared secret file) or alone.
- :func:`distribution_node`: ``docker-registry`` with ``proxy: remoteurl:`` the upstream.

``ip netns exec`` execs the program after entering the namespace, so the PID that
``Popen`` returns is the program's own: ``kill -9`` of a node is ``kill -9`` of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from tests.support.process import stop_process

from .net import Endpoint

ROOT = Path(__file__).resolve().parents[2]
PORT = 5000
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment: no proxies, no CACHEPROXY_* settings, this checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("CACHEPROXY_")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


class NsProcess:
    """A program in a namespace, started by the bed, stopped by its PID."""

    def __init__(
        self,
        label: str,
        ep: Endpoint,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.label = label
        self.ep = ep
        self.argv = list(argv)
        self.log = log
        # Added to the clean environment (a cacheproxy node's CACHEPROXY_* settings).
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ep.address}:{PORT}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.ep.exec(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=clean_env(self.env),
            start_new_session=True,
        )

    def kill(self) -> None:
        """``kill -9``, by PID."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, STOP_TIMEOUT)
        if self._out is not None:
            self._out.close()
            self._out = None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def wait_ready(procs: Sequence[NsProcess], timeout: float = START_TIMEOUT) -> None:
    """Probe every process's ``/v2/`` from inside its namespace, all at once, bounded."""
    probe = [sys.executable, "-m", "benchmarks.netbed.probe"]
    probes = [
        subprocess.Popen(
            p.ep.exec([*probe, p.url + "/v2/", str(timeout)]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env=clean_env(),
        )
        for p in procs
    ]
    deadline = time.monotonic() + timeout + 5
    failed = []
    for proc, probe in zip(procs, probes, strict=True):
        try:
            code = probe.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.wait()
            code = -1
        if code != 0 or proc.pid is None:
            failed.append(f"{proc.label} ({proc.url}):\n{proc.tail()}")
    if failed:
        raise RuntimeError("did not start: " + "\n".join(failed))


def registry_config(address: str, data: Path, remoteurl: str | None = None) -> str:
    """A distribution config (JSON is YAML) serving ``data`` on ``address:PORT``."""
    cfg: dict[str, object] = {
        "version": "0.1",
        "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(data)},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"{address}:{PORT}", "secret": secrets.token_hex(16)},
    }
    if remoteurl is not None:
        cfg["proxy"] = {"remoteurl": remoteurl}
    return json.dumps(cfg, indent=1)


def registry(label: str, ep: Endpoint, workdir: Path, remoteurl: str | None) -> NsProcess:
    """``docker-registry serve`` in ``ep``, storage under ``workdir/data``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(registry_config(ep.address, workdir / "data", remoteurl))
    return NsProcess(label, ep, ["docker-registry", "serve", str(config)], workdir / "registry.log")


def cacheproxy_node(
    label: str,
    ep: Endpoint,
    workdir: Path,
    upstream: str,
    members: Sequence[str] = (),
    secret_file: Path | None = None,
    holders: bool = True,
    settings: Mapping[str, str] | None = None,
) -> NsProcess:
    """``cacheproxy serve`` in ``ep``: in cluster mode when ``members`` are given
    (``holders`` False: each blob from its owner alone, ``--no-peer-holders``);
    ``settings``: more of its settings, by name (``peer_piece_size``: "1MiB")."""
    url = f"http://{ep.address}:{PORT}"
    argv = [sys.executable, "-m", "cacheproxy", "serve", "--upstream", upstream]
    # Every address of its namespace (its veth's and loopback, where an operator's
    # command on the node reaches it, as the operator's endpoints want).
    argv += ["--cache-dir", str(workdir / "cache"), "--listen", f"0.0.0.0:{PORT}"]
    argv += ["--log-level", "WARNING"]
    if members:
        assert secret_file is not None
        argv += ["--self", url, "--peer-secret-file", str(secret_file)]
        for member in members:
            argv += ["--peer", member]
        if not holders:
            argv.append("--no-peer-holders")
    env = {f"CACHEPROXY_{key.upper()}": value for key, value in (settings or {}).items()}
    return NsProcess(label, ep, argv, workdir / "cacheproxy.log", env)
