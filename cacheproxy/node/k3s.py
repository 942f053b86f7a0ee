"""k3s and RKE2: ``registries.yaml``, which they turn into containerd's
``hosts.toml`` when they start (so install needs a restart of the service).

Each registry's ``endpoint`` list gets the mirror first; everything else in the
file (other endpoints, ``rewrite``, the ``configs`` with logins and TLS) stays. The
``"*"`` entry stands for every other registry (containerd's ``_default``). The file
is YAML: PyYAML reads it (``safe_load``: no object tags) and writes it back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .context import Check, Node, show
from .files import NodeError, read_file

REGISTRIES = "registries.yaml"
WILDCARD = "*"
HEADER = (
    "# Written by `cacheproxy node install`: the mirror first for each registry, the\n"
    "# rest as it was. `cacheproxy node uninstall` puts back the file as it was.\n"
)


def load_yaml(data: bytes | None, where: Path) -> dict[str, Any]:
    """A YAML mapping (empty for no file); NodeError for anything else."""
    if data is None or not data.strip():
        return {}
    try:
        doc = yaml.safe_load(data.decode())
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise NodeError(f"{where}: not YAML ({exc})") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise NodeError(f"{where}: not a YAML mapping")
    return doc


def merge(doc: Mapping[str, Any], mirror: str, names: list[str]) -> dict[str, Any]:
    """``doc`` with ``mirror`` first in each of ``names``' endpoint lists. Pure."""
    out = dict(doc)
    mirrors = dict(out.get("mirrors") or {})
    for name in names:
        entry = dict(mirrors.get(name) or {})
        theirs = [e for e in entry.get("endpoint") or [] if str(e).rstrip("/") != mirror]
        entry["endpoint"] = [mirror, *theirs]
        mirrors[name] = entry
    out["mirrors"] = mirrors
    return out


class K3s:
    """k3s (``/etc/rancher/k3s``) or RKE2 (``/etc/rancher/rke2``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.etc = f"/etc/rancher/{name}"
        self.binaries = (f"/usr/local/bin/{name}", f"/usr/bin/{name}", f"/opt/{name}/bin/{name}")

    def checks(self, node: Node) -> list[Check]:
        version, where = node.version(self.binaries)
        out = [
            Check("version", True, f"{self.name} {show(version)} ({where})")
            if version is not None
            else Check("version", False, where)
        ]
        path = node.host(self.etc) / REGISTRIES
        try:
            load_yaml(read_file(path), path)
            elsewhere = self._private_registry(node)
        except NodeError as exc:
            return [*out, Check("registries.yaml", False, str(exc))]
        if elsewhere is not None:
            out.append(
                Check(
                    "registries.yaml",
                    False,
                    f"{self.name} is told private-registry: "
                    f"{elsewhere}; install writes {self.etc}/{REGISTRIES}",
                )
            )
        else:
            out.append(
                Check(
                    "registries.yaml", True, f"{self.name} reads {self.etc}/{REGISTRIES} at start"
                )
            )
        return out

    def _private_registry(self, node: Node) -> str | None:
        """A ``private-registry`` other than the default, from config.yaml(.d)."""
        etc = node.host(self.etc)
        files = [etc / "config.yaml", *sorted((etc / "config.yaml.d").glob("*.yaml"))]
        found = None
        for path in files:
            value = load_yaml(read_file(path), path).get("private-registry")
            if value is not None:
                found = str(value)
        if found is None or found.rstrip("/") == f"{self.etc}/{REGISTRIES}":
            return None
        return found

    def directories(self, node: Node) -> list[Path]:
        return [node.host(self.etc)]

    def files(
        self, node: Node, directory: Path, original: Callable[[str], bytes | None]
    ) -> dict[str, bytes]:
        doc = load_yaml(original(REGISTRIES), directory / REGISTRIES)
        names = [r.name for r in node.registries()] + [WILDCARD]
        merged = merge(doc, node.mirror, names)
        text = yaml.safe_dump(merged, sort_keys=False, default_flow_style=False)
        return {REGISTRIES: (HEADER + text).encode()}

    def notes(self, node: Node) -> list[str]:
        server = "k3s" if self.name == "k3s" else f"{self.name}-server"
        return [
            f"{self.name} reads {REGISTRIES} when it starts: restart it "
            f"(systemctl restart {server} on servers, {self.name}-agent on agents)"
        ]
