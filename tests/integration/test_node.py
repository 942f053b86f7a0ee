"""`cacheproxy node` against the real containerd on this machine.

install merges the mirror into a scratch ``certs.d`` that already holds a
``hosts.toml`` with CA files; ``ctr image pull --hosts-dir`` then goes through the
proxy (a forwarder in front of it counts the blob GETs, with containerd's ``?ns=``)
while the original host entries are still in the merged file; uninstall leaves the
directory byte-equal to before (a hash of the tree). ``node check`` reads
containerd's version from its binary and fails on a config without ``config_path``.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tomllib
from pathlib import Path

from tests.integration.test_runtimes import (  # noqa: F401 (fixtures)
    REGISTRY,
    assert_one_upstream_fetch,
    config_file,
    containerd,
    containerd_digests,
    ctr,
    front,
    image,
)
from tests.support.clients import ProcessResult, run_process
from tests.support.forwarder import Forwarder
from tests.support.images import PushedImage
from tests.support.proxy import RunningProxy
from tests.support.runtimes import CONTAINERD, Containerd
from tests.support.tls import self_signed

V2_CONFIG = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'


def tree_hash(directory: Path) -> dict[str, str]:
    """Every file and directory under ``directory``: content hash (or "dir") and mode."""
    out = {}
    for path in sorted(directory.rglob("*")):
        what = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(directory))] = f"{what} {oct(path.stat().st_mode)}"
    return out


async def node(*args: str) -> ProcessResult:
    """The real ``cacheproxy node`` command."""
    return await run_process(sys.executable, "-m", "cacheproxy", "node", *args, timeout=60)


def scratch_certs_d(root: Path, forwarder: Forwarder) -> Path:
    """``<root>/etc/containerd/certs.d`` with a reg.test hosts.toml of the node's own:
    its server with a CA file, another mirror with its CA and a client pair."""
    certs = root / "etc" / "containerd" / "certs.d"
    own = certs / REGISTRY
    own.mkdir(parents=True)
    cert, key = self_signed(own, "other-mirror.invalid")
    shutil.copy(cert, own / "ca.crt")
    (own / "hosts.toml").write_text(
        f'server = "{forwarder.url}"\n'
        'ca = "ca.crt"\n\n'
        "# The node's other mirror (never reached here: the proxy answers first).\n"
        '[host."https://other-mirror.invalid:9"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        f'  ca = "{own / "ca.crt"}"\n'
        f'  client = [["{cert}", "{key}"]]\n'
    )
    return certs


async def test_install_pull_through_the_proxy_and_uninstall_to_the_same_bytes(
    containerd: Containerd,  # noqa: F811
    image: PushedImage,  # noqa: F811
    config_file: Path,  # noqa: F811
    forwarder: Forwarder,
    front: tuple[RunningProxy, Forwarder],  # noqa: F811
    tmp_path: Path,
) -> None:
    proxy, client_side = front
    root = tmp_path / "host"
    certs = scratch_certs_d(root, forwarder)
    original = tomllib.loads((certs / REGISTRY / "hosts.toml").read_text())
    before = tree_hash(certs)
    common = ["--runtime", "containerd", "--root", str(root), "--config", str(config_file)]
    common += ["--mirror", client_side.url]

    dry = (await node("install", *common, "--dry-run")).check()
    assert f'+[host."{client_side.url}"]' in dry.stdout.decode()
    assert tree_hash(certs) == before  # a dry run writes nothing
    (await node("install", *common)).check()
    merged = tomllib.loads((certs / REGISTRY / "hosts.toml").read_text())
    # The mirror first, then every host the node had, with its CA and client pair;
    # the server and its CA stay.
    assert list(merged["host"]) == [client_side.url, *original["host"]]
    assert merged["host"][client_side.url] == {"capabilities": ["pull", "resolve"]}
    for url, table in original["host"].items():
        assert merged["host"][url] == table
    assert (merged["server"], merged["ca"]) == (original["server"], original["ca"])
    # A second install (a restarted pod) changes nothing and keeps the first backup.
    backup = certs / ".cacheproxy" / "backup" / REGISTRY / "hosts.toml"
    kept = backup.read_bytes()
    (await node("install", *common)).check()
    assert backup.read_bytes() == kept

    ref = f"{REGISTRY}/{image.reference}"
    pull = ["images", "pull", "--snapshotter", "native", "--hosts-dir", str(certs), ref]
    await ctr(containerd, *pull)
    manifest, content = await containerd_digests(containerd, ref)
    assert manifest == image.digest
    assert {b.digest for b in image.blobs} <= content
    for blob in image.blobs:
        path = f"/v2/{image.name}/blobs/{blob.digest}?ns={REGISTRY}"
        assert client_side.body_bytes("GET", path) == blob.size
    assert_one_upstream_fetch(image, forwarder, proxy)

    said = (await node("uninstall", "--runtime", "containerd", "--root", str(root))).check()
    assert f"restored {certs / REGISTRY / 'hosts.toml'}" in said.stdout.decode()
    assert tree_hash(certs) == before


async def test_check_reads_the_version_and_wants_config_path(
    front: tuple[RunningProxy, Forwarder],  # noqa: F811
    config_file: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, client_side = front
    root = tmp_path / "host"
    (root / "etc" / "containerd").mkdir(parents=True)
    config = root / "etc" / "containerd" / "config.toml"
    binary = shutil.which(CONTAINERD)
    assert binary is not None
    real = (await run_process(binary, "--version", timeout=30)).check().stdout.decode()
    argv = ["check", "--runtime", "containerd", "--root", str(root), "--binary", binary]
    argv += ["--config", str(config_file), "--mirror", client_side.url]

    config.write_text(V2_CONFIG)
    failed = await node(*argv)
    lines = failed.stdout.decode().splitlines()
    assert failed.returncode == 1
    assert any(line.startswith("FAIL  config_path: not set") for line in lines), lines
    # The version is the binary's own, not a guess.
    (version,) = [line for line in lines if line.startswith("PASS  version:")]
    assert version.split()[3] in real
    assert f"PASS  mirror: {client_side.url}/v2/ answers 200" in lines

    config.write_text(V2_CONFIG + 'config_path = "/etc/containerd/certs.d"\n')
    passed = await node(*argv)
    assert passed.returncode == 0, passed.stdout.decode()
    assert all(line.startswith("PASS") for line in passed.stdout.decode().splitlines())
