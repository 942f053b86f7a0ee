"""containerd's ``hosts.toml``, merged: the mirror first, everything else kept. Pure.

containerd (docs/hosts.md) tries the ``[host."<url>"]`` tables in the order the file
gives them, then ``server``; the top-level ``ca``, ``client`` and ``skip_verify``
belong to ``server``, and each host keeps its own. A file the node already has (a
registry's CA, client certificates, another mirror) is merged, not replaced: its
server and host tables stay as they are, with the mirror's table put first. Mirrors
are sent ``?ns=<registry>``, which is how the proxy knows the upstream.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from .files import NodeError
from .tomlwrite import dumps

CAPABILITIES = ["pull", "resolve"]
HEADER = (
    "Written by `cacheproxy node install`: the mirror first, then what was here.\n"
    "`cacheproxy node uninstall` puts back the file as it was (.cacheproxy/backup)."
)


def parse(data: bytes | None, where: str) -> dict[str, Any] | None:
    """A hosts.toml as tomllib reads it; NodeError when it is not one."""
    if data is None:
        return None
    try:
        doc = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise NodeError(f"{where}: not TOML ({exc}); fix or move it, then install again") from exc
    hosts = doc.get("host", {})
    if not isinstance(hosts, Mapping) or not all(isinstance(h, Mapping) for h in hosts.values()):
        raise NodeError(f"{where}: [host] is not a table of host tables")
    return doc


def merge(
    existing: Mapping[str, Any] | None,
    mirror: str,
    server: str | None,
    skip_verify: bool = False,
) -> dict[str, Any]:
    """``existing`` with ``mirror`` as its first host.

    ``server`` (the registry's URL; None: the registry the image names) and
    ``skip_verify`` are used only when the file names no server of its own. A host
    table the file already has for the mirror keeps its other keys (a CA, say).
    """
    doc = dict(existing or {})
    hosts: dict[str, Any] = dict(doc.pop("host", {}))
    mine: dict[str, Any] = {"capabilities": list(CAPABILITIES)}
    for url in [u for u in hosts if u.rstrip("/") == mirror.rstrip("/")]:
        mine = {**hosts.pop(url), "capabilities": list(CAPABILITIES)}
    out: dict[str, Any] = {}
    if "server" in doc:
        out["server"] = doc.pop("server")
    elif server is not None:
        out["server"] = server
        if skip_verify and "skip_verify" not in doc:
            out["skip_verify"] = True
    out.update(doc)
    out["host"] = {mirror: mine, **hosts}
    return out


def render(doc: Mapping[str, Any]) -> bytes:
    return dumps(doc, HEADER).encode()
