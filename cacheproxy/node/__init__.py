"""``cacheproxy node``: wire a node's container runtime to the proxy, check that it
will use it, and take it out again.

- ``context``: the node as the command sees it (root, mirror, binary), a check's
  result, versions read from the runtime's binary, the mirror's own check;
- ``files``: atomic writes, the backup written once, the manifest of what install
  wrote, and the uninstall that restores it byte for byte;
- ``tomlwrite``: TOML out (tomllib reads it in);
- one module per runtime: ``containerd`` (with ``hoststoml``, the merge of one
  ``hosts.toml``), ``crio``, ``k3s`` (k3s and RKE2), ``docker``, and
  ``snapshotters`` (SOCI's and stargz's own mirror sections).
"""

from __future__ import annotations

from .containerd import Containerd
from .context import Check, Node, Wiring
from .crio import Crio
from .docker import Docker
from .k3s import K3s
from .snapshotters import SOCI, STARGZ, Snapshotter

RUNTIMES: dict[str, Wiring] = {
    "containerd": Containerd(),
    "crio": Crio(),
    "k3s": K3s("k3s"),
    "rke2": K3s("rke2"),
    "docker": Docker(),
}
SNAPSHOTTERS: dict[str, Wiring] = {"soci": Snapshotter(SOCI), "stargz": Snapshotter(STARGZ)}

__all__ = ["RUNTIMES", "SNAPSHOTTERS", "Check", "Node", "Wiring"]
