"""Real container runtimes for tests: a containerd daemon of the test's own, and podman.

:class:`Containerd` writes a config that keeps everything (root, state, sockets, the
``opt`` plugin's directory) under the test's directory, starts Debian's ``containerd``
as a child process, waits (bounded) until ``ctr version`` answers, and stops it by
its PID. :class:`Podman` gives podman storage, run and temp directories of the
test's own, so a pull touches nothing of the machine's.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.support.process import stop_process
from tests.support.waiting import eventually_sync

CONTAINERD = "containerd"
CTR = "ctr"
PODMAN = "podman"

#: How long :meth:`Containerd.start` waits for the daemon to answer.
START_TIMEOUT = 20.0
#: How long :meth:`Containerd.stop` waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT = 10.0
#: The containerd namespace the tests pull into.
NAMESPACE = "cacheproxy-test"
# A unix socket path must fit sun_path (108 bytes on Linux, NUL included).
_MAX_SOCKET_PATH = 100


def _toml(value: str) -> str:
    return json.dumps(value)


class Containerd:
    """A ``containerd`` daemon with its own root, state, config and socket.

    Layout of *workdir*: ``config.toml``, ``root/``, ``state/``, ``opt/`` and
    ``containerd.log``; the socket too, unless that path would be too long for a unix
    socket, in which case it lives in a short temporary directory removed on stop.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "containerd.log"
        self._sock_dir: Path | None = None
        self.socket = workdir / "containerd.sock"
        if len(str(self.socket)) > _MAX_SOCKET_PATH:
            self._sock_dir = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
            self.socket = self._sock_dir / "containerd.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def ctr(self, *args: str) -> list[str]:
        """The argv of ``ctr`` talking to this daemon in the test namespace."""
        return [CTR, "--address", str(self.socket), "--namespace", NAMESPACE, *args]

    def _write_config(self) -> Path:
        root, state, opt = self.workdir / "root", self.workdir / "state", self.workdir / "opt"
        # Only what a pull needs: no CRI server, no snapshotters that need a special
        # filesystem, no debug or metrics listeners.
        text = "\n".join(
            [
                "version = 2",
                f"root = {_toml(str(root))}",
                f"state = {_toml(str(state))}",
                "disabled_plugins = ["
                + ", ".join(
                    _toml(p)
                    for p in (
                        "io.containerd.grpc.v1.cri",
                        "io.containerd.snapshotter.v1.aufs",
                        "io.containerd.snapshotter.v1.btrfs",
                        "io.containerd.snapshotter.v1.devmapper",
                        "io.containerd.snapshotter.v1.zfs",
                    )
                )
                + "]",
                "[grpc]",
                f"  address = {_toml(str(self.socket))}",
                "[ttrpc]",
                f"  address = {_toml(str(self.socket) + '.ttrpc')}",
                "[debug]",
                '  address = ""',
                "[metrics]",
                '  address = ""',
                '[plugins."io.containerd.internal.v1.opt"]',
                f"  path = {_toml(str(opt))}",
                "",
            ]
        )
        path = self.workdir / "config.toml"
        path.write_text(text)
        return path

    def start(self) -> None:
        """Start the daemon and wait until it answers; raise with its log if it does not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [CONTAINERD, "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        proc = self._proc

        def state() -> str:
            """ "exited", "up", or "" (not yet)."""
            if proc.poll() is not None:
                return "exited"
            if self.socket.exists():
                probe = subprocess.run(
                    self.ctr("version"), capture_output=True, timeout=5, check=False
                )
                if probe.returncode == 0:
                    return "up"
            return ""

        with contextlib.suppress(AssertionError):  # not up in time: the error below
            what = "containerd up or exited"
            if eventually_sync(state, timeout=START_TIMEOUT, interval=0.1, what=what) == "up":
                return
        log = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"containerd did not start within {START_TIMEOUT:.0f} s:\n{log}")

    def version(self) -> str:
        """``containerd --version``, for test reports."""
        out = subprocess.run([CONTAINERD, "--version"], capture_output=True, timeout=10)
        return out.stdout.decode().strip()

    def stop(self) -> None:
        """SIGTERM the daemon by PID, SIGKILL it if it lingers; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)

    def __enter__(self) -> Containerd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Podman:
    """podman with storage (vfs), temp and network dirs under *workdir*.

    podman refuses a run root longer than 50 characters, so that one lives in a short
    temporary directory of its own, removed on exit. vfs needs no overlay mount, and
    ``--events-backend none`` and cgroupfs keep podman away from journald and
    systemd, which a test machine may not run. A containers.conf of its own picks the
    CNI network backend: rootful netavark keeps its state in ``/run/containers``
    whatever the flags say.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._runroot: Path | None = None

    def __enter__(self) -> Podman:
        for name in ("root", "tmp", "networks", "volumes"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        (self.workdir / "containers.conf").write_text('[network]\nnetwork_backend = "cni"\n')
        self._runroot = Path(tempfile.mkdtemp(prefix="pod-", dir="/tmp"))
        return self

    @property
    def env(self) -> dict[str, str]:
        """Environment for every podman run (add ``CONTAINERS_REGISTRIES_CONF``)."""
        return {"CONTAINERS_CONF": str(self.workdir / "containers.conf")}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runroot is not None:
            shutil.rmtree(self._runroot, ignore_errors=True)
            self._runroot = None

    def argv(self, *args: str) -> list[str]:
        """The argv of ``podman ARGS`` on this storage."""
        assert self._runroot is not None, "use Podman as a context manager"
        return [
            PODMAN,
            "--root",
            str(self.workdir / "root"),
            "--runroot",
            str(self._runroot),
            "--tmpdir",
            str(self.workdir / "tmp"),
            "--network-config-dir",
            str(self.workdir / "networks"),
            "--volumepath",
            str(self.workdir / "volumes"),
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
            *args,
        ]
