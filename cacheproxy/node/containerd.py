"""containerd: ``certs.d/<registry>/hosts.toml`` merged, and the CRI settings that
make containerd read them.

containerd's CRI reads ``hosts.toml`` only from the directories its ``config_path``
names: in a version 2 config (containerd 1.x) under
``[plugins."io.containerd.grpc.v1.cri".registry]``, in a version 3 config
(containerd 2.x) under ``[plugins."io.containerd.cri.v1.images".registry]``. From
containerd 2.1 the CRI pulls through the transfer service, which does not read
``hosts.toml`` unless ``use_local_image_pull = true`` in the same images plugin.
The check reads ``config.toml`` and its ``imports`` the way containerd merges them.
"""

from __future__ import annotations

import glob
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .context import Check, Node, Version, show
from .files import NodeError, read_file
from .hoststoml import merge, parse, render

CONFIG = "/etc/containerd/config.toml"
CERTS_D = "/etc/containerd/certs.d"
BINARIES = ("/usr/bin/containerd", "/usr/local/bin/containerd", "/bin/containerd")
# containerd remotes/docker/config: a registry with no directory of its own.
DEFAULT = "_default"
CRI_V2 = "io.containerd.grpc.v1.cri"
IMAGES_V3 = "io.containerd.cri.v1.images"
# The release whose CRI pulls through the transfer service (use_local_image_pull).
TRANSFER_SINCE = (2, 1, 0)


def load(node: Node) -> tuple[dict[str, Any], list[str]]:
    """config.toml with its imports merged (raises NodeError), and the files read."""
    main = node.host(CONFIG)
    data = read_file(main)
    if data is None:
        return {}, []
    doc = _parse(data, main)
    read = [str(main)]
    for pattern in doc.get("imports", []):
        host_pattern = pattern if pattern.startswith("/") else str(Path(CONFIG).parent / pattern)
        for path in sorted(glob.glob(str(node.host(host_pattern)))):
            imported = _parse(read_file(Path(path)) or b"", Path(path))
            doc = merge_import(doc, imported)
            read.append(path)
    return doc, read


def _parse(data: bytes, where: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise NodeError(f"{where}: not TOML ({exc})") from exc


def merge_import(doc: Mapping[str, Any], imported: Mapping[str, Any]) -> dict[str, Any]:
    """An imported file over the config: containerd 1.x replaces each plugin's table
    whole (config.mergeConfig), 2.x (version 3) merges them key by key."""
    out = dict(doc)
    deep = int(doc.get("version", 1)) >= 3
    for key, value in imported.items():
        if key == "plugins" and isinstance(value, Mapping):
            plugins = dict(out.get("plugins", {}))
            for name, table in value.items():
                old = plugins.get(name)
                if deep and isinstance(old, Mapping) and isinstance(table, Mapping):
                    table = _deep(old, table)
                plugins[name] = table
            out["plugins"] = plugins
        elif key not in ("imports", "version"):
            out[key] = value
    return out


def _deep(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep(out[k], v) if isinstance(out.get(k), Mapping) and isinstance(v, Mapping) else v
        )
    return out


def _images_table(doc: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """(the CRI plugin's name, its table) for this config's version."""
    version = int(doc.get("version", 1))
    name = IMAGES_V3 if version >= 3 else CRI_V2 if version == 2 else "cri"
    table = doc.get("plugins", {}).get(name, {})
    return name, table if isinstance(table, Mapping) else {}


def config_path_check(doc: Mapping[str, Any]) -> Check:
    """The CRI's config_path names the directory install writes in."""
    name, table = _images_table(doc)
    registry = table.get("registry", {})
    where = f'[plugins."{name}".registry]'
    config_path = registry.get("config_path", "") if isinstance(registry, Mapping) else ""
    dirs = [d.rstrip("/") for d in str(config_path).split(":") if d]
    if CERTS_D in dirs:
        return Check("config_path", True, f"{where} config_path = {config_path!r}")
    fix = f'set {where} config_path = "{CERTS_D}" and restart containerd'
    if isinstance(registry, Mapping) and "mirrors" in registry:
        fix += " (and remove its mirrors table: containerd refuses both)"
    if not dirs:
        return Check("config_path", False, f"not set: containerd reads no hosts.toml; {fix}")
    return Check("config_path", False, f"{config_path!r} does not name {CERTS_D}; {fix}")


def transfer_check(doc: Mapping[str, Any], version: Version | None) -> Check:
    """containerd >= 2.1 reads hosts.toml only with use_local_image_pull = true."""
    if version is None:
        return Check("transfer", False, "containerd's version is unknown (see the version check)")
    if version < TRANSFER_SINCE:
        return Check(
            "transfer", True, f"containerd {show(version)} pulls without the transfer service"
        )
    plugins = doc.get("plugins", {})
    on = any(
        isinstance(plugins.get(n), Mapping) and plugins[n].get("use_local_image_pull") is True
        for n in (IMAGES_V3, CRI_V2)
    )
    if on:
        return Check("transfer", True, "use_local_image_pull = true: the CRI reads hosts.toml")
    return Check(
        "transfer",
        False,
        f"containerd {show(version)}'s transfer service ignores hosts.toml: set "
        f'[plugins."{IMAGES_V3}"] use_local_image_pull = true and restart containerd',
    )


class Containerd:
    """containerd 1.6+ and 2.x (kubeadm, EKS, GKE, AKS)."""

    name = "containerd"

    def checks(self, node: Node) -> list[Check]:
        version, where = node.version(BINARIES)
        out = [
            Check("version", True, f"containerd {show(version)} ({where})")
            if version is not None
            else Check("version", False, where)
        ]
        try:
            doc, read = load(node)
        except NodeError as exc:
            return [*out, Check("config", False, str(exc))]
        said = ", ".join(read) if read else f"no {node.host(CONFIG)}: containerd's defaults"
        out.append(Check("config", True, f"read {said}"))
        out += [config_path_check(doc), transfer_check(doc, version)]
        return out

    def directories(self, node: Node) -> list[Path]:
        return [node.host(CERTS_D)]

    def files(
        self, node: Node, directory: Path, original: Callable[[str], bytes | None]
    ) -> dict[str, bytes]:
        wanted: list[tuple[str, str | None, bool]] = [
            (r.name, r.url, not r.tls_verify) for r in node.registries()
        ]
        # Any other registry: the proxy first; it refuses what it does not serve,
        # and containerd moves on to the registry itself.
        wanted.append((DEFAULT, None, False))
        files = {}
        for name, server, skip_verify in wanted:
            rel = f"{name}/hosts.toml"
            existing = parse(original(rel), str(directory / rel))
            files[rel] = render(merge(existing, node.mirror, server, skip_verify))
        return files

    def notes(self, node: Node) -> list[str]:
        return ["containerd reads hosts.toml at each pull: no restart needed"]
