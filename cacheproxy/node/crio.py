"""CRI-O and podman: a ``registries.conf.d`` drop-in (containers-registries.conf.d(5)).

containers/image reads ``/etc/containers/registries.conf``, then the ``.conf`` files
of ``registries.conf.d`` in name order; a ``[[registry]]`` with the same prefix in a
later file replaces the earlier one whole. So the drop-in merges: each registry's
entry is the one in force before it (its location, its other mirrors, its
``insecure`` or ``blocked``), with the proxy put first among its mirrors, at
``<proxy>/<registry>`` (the proxy routes on that path prefix).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..registries import DOCKER_HUB
from .context import Check, Node, show
from .files import NodeError, read_file
from .tomlwrite import dumps

REGISTRIES_CONF = "/etc/containers/registries.conf"
DROP_IN_DIR = "/etc/containers/registries.conf.d"
DROP_IN = "50-cacheproxy.conf"
BINARIES = ("/usr/bin/crio", "/usr/local/bin/crio", "/usr/bin/podman")
HEADER = (
    "Written by `cacheproxy node install`: each registry's entry as it was, with the\n"
    "proxy as its first mirror. `cacheproxy node uninstall` removes this file."
)
# Version 1 tables: containers/image refuses a v1 registries.conf with v2 drop-ins.
_V1_KEYS = ("search", "insecure", "block")


def _parse(path: Path) -> dict[str, Any] | None:
    data = read_file(path)
    if data is None:
        return None
    try:
        return tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise NodeError(f"{path}: not TOML ({exc})") from exc


def _entries(doc: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    found = (doc or {}).get("registry", [])
    return [dict(e) for e in found if isinstance(e, Mapping)] if isinstance(found, list) else []


def _prefix(entry: Mapping[str, Any]) -> str:
    return str(entry.get("prefix") or entry.get("location") or "")


def in_force(node: Node, before: str = DROP_IN) -> dict[str, dict[str, Any]]:
    """prefix -> the [[registry]] entry in force, from registries.conf and the
    drop-ins that sort before ``before``."""
    out = {_prefix(e): e for e in _entries(_parse(node.host(REGISTRIES_CONF)))}
    drop_ins = node.host(DROP_IN_DIR)
    names = sorted(p.name for p in drop_ins.glob("*.conf")) if drop_ins.is_dir() else []
    for name in [n for n in names if n < before]:
        out.update({_prefix(e): e for e in _entries(_parse(drop_ins / name))})
    return out


def merged_entries(node: Node, before: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The drop-in's [[registry]] entries. Pure."""
    parts = urlsplit(node.mirror)
    out = []
    for r in node.registries():
        if ":" in r.name:
            continue  # the path-prefix mirror cannot carry a port (reference grammar)
        theirs = dict(before.get(r.name, {}))
        location = DOCKER_HUB if r.name == DOCKER_HUB else r.host
        entry: dict[str, Any] = {"prefix": r.name, "location": theirs.pop("location", location)}
        if (r.plain_http or not r.tls_verify) and "insecure" not in theirs:
            entry["insecure"] = True
        mine: dict[str, Any] = {"location": f"{parts.netloc}/{r.name}"}
        if parts.scheme == "http":
            mine["insecure"] = True
        others = [m for m in theirs.pop("mirror", []) if m.get("location") != mine["location"]]
        theirs.pop("prefix", None)
        entry.update(theirs)
        entry["mirror"] = [mine, *others]
        out.append(entry)
    return out


class Crio:
    """CRI-O (and podman, which reads the same files)."""

    name = "crio"

    def checks(self, node: Node) -> list[Check]:
        version, where = node.version(BINARIES)
        out = [
            Check("version", True, f"{show(version)} ({where})")
            if version is not None
            else Check("version", False, where)
        ]
        try:
            conf = _parse(node.host(REGISTRIES_CONF))
            old = (conf or {}).get("registries")
            v1 = isinstance(old, Mapping) and any(k in old for k in _V1_KEYS)
            later = self._later(node)
        except NodeError as exc:
            return [*out, Check("registries.conf", False, str(exc))]
        if v1:
            out.append(
                Check(
                    "registries.conf",
                    False,
                    f"{node.host(REGISTRIES_CONF)} is version 1 "
                    "([registries.search]): drop-ins are not read with it; convert it to v2",
                )
            )
        else:
            out.append(Check("registries.conf", True, f"v2; drop-ins in {DROP_IN_DIR} are read"))
        ours = {r.name for r in node.registries()}
        clash = sorted(
            (name, prefix)
            for name, prefixes in later.items()
            for prefix in prefixes
            if prefix in ours
        )
        if clash:
            said = ", ".join(f"{p} in {n}" for n, p in clash)
            out.append(
                Check("drop-ins", False, f"later drop-ins replace the mirror's entries: {said}")
            )
        else:
            out.append(
                Check("drop-ins", True, f"no drop-in after {DROP_IN} names a registry served")
            )
        return out

    def _later(self, node: Node) -> dict[str, list[str]]:
        drop_ins = node.host(DROP_IN_DIR)
        if not drop_ins.is_dir():
            return {}
        return {
            p.name: [_prefix(e) for e in _entries(_parse(p))]
            for p in sorted(drop_ins.glob("*.conf"))
            if p.name > DROP_IN
        }

    def directories(self, node: Node) -> list[Path]:
        return [node.host(DROP_IN_DIR)]

    def files(
        self, node: Node, directory: Path, original: Callable[[str], bytes | None]
    ) -> dict[str, bytes]:
        entries = merged_entries(node, in_force(node))
        return {DROP_IN: dumps({"registry": entries}, HEADER).encode()}

    def notes(self, node: Node) -> list[str]:
        return [
            "CRI-O reads registries.conf.d again on SIGHUP: systemctl reload crio"
            " (podman: at each run)"
        ]
