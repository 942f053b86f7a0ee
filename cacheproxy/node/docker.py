"""Docker: ``registry-mirrors`` in ``/etc/docker/daemon.json``, merged (JSON).

Docker sends mirror requests for Docker Hub only, naming no registry: the proxy's
``default_upstream`` must be docker.io. dockerd refuses to start when a setting is
given both as a flag and in daemon.json, so the check reads the service's command
line for ``--registry-mirror`` and for a ``--config-file`` elsewhere.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

from ..commands.client_config import daemon_json
from ..config import ConfigError
from ..registries import DOCKER_HUB
from .context import Check, Node, show
from .files import NodeError, read_file

ETC = "/etc/docker"
DAEMON_JSON = "daemon.json"
BINARIES = ("/usr/bin/dockerd", "/usr/local/bin/dockerd")
UNITS = (
    "/lib/systemd/system/docker.service",
    "/usr/lib/systemd/system/docker.service",
    "/etc/systemd/system/docker.service",
)


def load(data: bytes | None, where: Path) -> dict[str, object] | None:
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise NodeError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise NodeError(f"{where}: not a JSON object")
    return doc


def exec_flags(node: Node) -> list[str]:
    """Every argument of dockerd's ExecStart lines in its unit and drop-ins."""
    paths = [node.host(u) for u in UNITS]
    for unit in UNITS:
        drop_ins = node.host(unit + ".d")
        paths += sorted(drop_ins.glob("*.conf")) if drop_ins.is_dir() else []
    words: list[str] = []
    for path in paths:
        text = (read_file(path) or b"").decode(errors="replace")
        for line in text.replace("\\\n", " ").splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() == "ExecStart" and value.strip():
                words += shlex.split(value, comments=False, posix=True)
    return words


class Docker:
    """dockerd's registry-mirrors (Docker Hub pulls only)."""

    name = "docker"

    def checks(self, node: Node) -> list[Check]:
        version, where = node.version(BINARIES)
        out = [
            Check("version", True, f"dockerd {show(version)} ({where})")
            if version is not None
            else Check("version", False, where)
        ]
        path = node.host(ETC) / DAEMON_JSON
        try:
            load(read_file(path), path)
            flags = exec_flags(node)
        except NodeError as exc:
            return [*out, Check("daemon.json", False, str(exc))]
        clash = [f for f in flags if f.startswith(("--registry-mirror", "--config-file"))]
        if clash:
            out.append(
                Check(
                    "daemon.json",
                    False,
                    f"dockerd is started with {' '.join(clash)}: "
                    "with registry-mirrors in daemon.json too it refuses to start",
                )
            )
        else:
            out.append(Check("daemon.json", True, f"dockerd reads {ETC}/{DAEMON_JSON}"))
        default = node.config.default_upstream
        out.append(
            Check("default_upstream", True, "docker.io: Docker's mirror requests name no registry")
            if default == DOCKER_HUB
            else Check("default_upstream", False, f"{default!r}: Docker mirrors only docker.io")
        )
        return out

    def directories(self, node: Node) -> list[Path]:
        return [node.host(ETC)]

    def files(
        self, node: Node, directory: Path, original: Callable[[str], bytes | None]
    ) -> dict[str, bytes]:
        existing = load(original(DAEMON_JSON), directory / DAEMON_JSON)
        try:
            return {DAEMON_JSON: daemon_json(node.config, node.mirror, existing).encode()}
        except ConfigError as exc:
            raise NodeError(str(exc)) from exc

    def notes(self, node: Node) -> list[str]:
        return ["dockerd reads registry-mirrors again on SIGHUP: systemctl reload docker"]
