"""The lazy-pulling snapshotters' own mirror sections (``--with soci,stargz``).

The SOCI and stargz snapshotters fetch layers themselves and do not read
containerd's ``hosts.toml``; their ``config.toml`` has
``[[resolver.host."<registry>".mirrors]]`` with ``host`` (host[:port]) and
``insecure`` (plain HTTP). They read it when they start. Both resolve through
containerd's docker resolver, which sends a mirror ``?ns=<registry>``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .context import Check, Node
from .files import NodeError, read_file
from .tomlwrite import dumps

CONFIG = "config.toml"
HEADER = (
    "Written by `cacheproxy node install`: the proxy first among each registry's mirrors.\n"
    "`cacheproxy node uninstall` puts back the file as it was (.cacheproxy/backup)."
)


@dataclass(frozen=True)
class Kind:
    """A snapshotter: its name for --with, its configuration directory, its unit."""

    name: str
    etc: str
    unit: str


SOCI = Kind("soci", "/etc/soci-snapshotter-grpc", "soci-snapshotter")
STARGZ = Kind("stargz", "/etc/containerd-stargz-grpc", "stargz-snapshotter")


def _parse(data: bytes | None, where: Path) -> dict[str, Any]:
    if data is None:
        return {}
    try:
        return tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise NodeError(f"{where}: not TOML ({exc})") from exc


def merge(doc: Mapping[str, Any], mirror: str, names: list[str]) -> dict[str, Any]:
    """``doc`` with the mirror first in each registry's ``mirrors``. Pure."""
    parts = urlsplit(mirror)
    mine = {"host": parts.netloc, "insecure": parts.scheme == "http"}
    out = dict(doc)
    resolver = dict(out.get("resolver") or {})
    hosts = dict(resolver.get("host") or {})
    for name in names:
        entry = dict(hosts.get(name) or {})
        theirs = [m for m in entry.get("mirrors") or [] if m.get("host") != mine["host"]]
        entry["mirrors"] = [dict(mine), *theirs]
        hosts[name] = entry
    resolver["host"] = hosts
    out["resolver"] = resolver
    return out


class Snapshotter:
    """One snapshotter's config.toml."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.name = kind.name

    def checks(self, node: Node) -> list[Check]:
        path = node.host(self.kind.etc) / CONFIG
        try:
            _parse(read_file(path), path)
        except NodeError as exc:
            return [Check(self.name, False, str(exc))]
        return [Check(self.name, True, f"{path} takes resolver mirrors (read at start)")]

    def directories(self, node: Node) -> list[Path]:
        return [node.host(self.kind.etc)]

    def files(
        self, node: Node, directory: Path, original: Callable[[str], bytes | None]
    ) -> dict[str, bytes]:
        doc = _parse(original(CONFIG), directory / CONFIG)
        merged = merge(doc, node.mirror, [r.name for r in node.registries()])
        return {CONFIG: dumps(merged, HEADER).encode()}

    def notes(self, node: Node) -> list[str]:
        return [f"the {self.name} snapshotter reads {CONFIG} at start: restart {self.kind.unit}"]
