"""The pure parts of `cacheproxy node`: TOML out, each runtime's merge, the
containerd checks, versions; and the install state's backup and restore."""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cacheproxy.config import Config, UpstreamConfig
from cacheproxy.node import containerd, crio, hoststoml, k3s, snapshotters
from cacheproxy.node.context import Node, parse_version
from cacheproxy.node.files import Installed
from cacheproxy.node.tomlwrite import dumps

MIRROR = "http://127.0.0.1:5000"

# --- TOML out ---------------------------------------------------------------------

_keys = st.text(min_size=1, max_size=8)
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_dumps_writes_what_tomllib_reads_back(doc: dict[str, Any]) -> None:
    assert tomllib.loads(dumps(doc, "a header\nof two lines")) == doc


def test_dumps_arrays_of_tables_and_odd_characters() -> None:
    doc = {
        "resolver": {"host": {"docker.io": {"mirrors": [{"host": "a"}, {"host": "b", "x": {}}]}}},
        "odd": 'del\x7f tab\t quote" emoji\U0001f600 nul\x00',
        "empty": {},
    }
    assert tomllib.loads(dumps(doc)) == doc


# --- containerd's hosts.toml -------------------------------------------------------

EXISTING = b"""server = "https://registry.example.com"
ca = "/etc/containerd/certs.d/registry.example.com/ca.crt"
client = [["client.cert", "client.key"]]

[host."https://other-mirror.example.com"]
  capabilities = ["pull"]
  ca = "mirror-ca.pem"
  [host."https://other-mirror.example.com".header]
    x-custom = ["1"]
"""


def test_hosts_merge_puts_the_mirror_first_and_keeps_every_host_ca_and_client() -> None:
    existing = hoststoml.parse(EXISTING, "hosts.toml")
    merged = hoststoml.merge(existing, MIRROR, "https://ignored.example.com")
    again = tomllib.loads(hoststoml.render(merged).decode())
    assert list(again["host"]) == [MIRROR, "https://other-mirror.example.com"]
    assert again["host"][MIRROR] == {"capabilities": ["pull", "resolve"]}
    assert existing is not None
    # The file's own server and its credentials stay: they are the fallback's.
    for key in ("server", "ca", "client"):
        assert again[key] == existing[key]
    assert (
        again["host"]["https://other-mirror.example.com"]
        == existing["host"]["https://other-mirror.example.com"]
    )
    # Merging the merged file changes nothing.
    assert hoststoml.merge(again, MIRROR, None) == again


def test_hosts_merge_of_no_file_names_the_server_and_an_existing_mirror_keeps_its_ca() -> None:
    fresh = hoststoml.merge(None, MIRROR, "http://reg.test:5000", skip_verify=True)
    assert fresh == {
        "server": "http://reg.test:5000",
        "skip_verify": True,
        "host": {MIRROR: {"capabilities": ["pull", "resolve"]}},
    }
    existing = {"host": {MIRROR + "/": {"capabilities": ["pull"], "ca": "proxy-ca.pem"}}}
    merged = hoststoml.merge(existing, MIRROR, None)
    assert merged["host"] == {MIRROR: {"capabilities": ["pull", "resolve"], "ca": "proxy-ca.pem"}}


# --- containerd's config checks ----------------------------------------------------


def _cfg(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def test_config_path_check_per_config_version() -> None:
    v2 = '[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/etc/containerd/certs.d"'
    v3 = (
        '[plugins."io.containerd.cri.v1.images".registry]\n'
        'config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"'
    )
    assert containerd.config_path_check(_cfg("version = 2\n" + v2)).ok
    assert containerd.config_path_check(_cfg("version = 3\n" + v3)).ok
    # The 1.x table in a version 3 config is not where containerd 2.x looks.
    assert not containerd.config_path_check(_cfg("version = 3\n" + v2)).ok
    unset = containerd.config_path_check(_cfg("version = 2\n"))
    assert not unset.ok and "not set" in unset.why
    other = containerd.config_path_check(
        _cfg('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/x"')
    )
    assert not other.ok
    mirrors = containerd.config_path_check(
        _cfg(
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
            'endpoint = ["https://m"]'
        )
    )
    assert not mirrors.ok and "mirrors" in mirrors.why


def test_transfer_check_wants_local_image_pull_from_2_1() -> None:
    on = _cfg('version = 3\n[plugins."io.containerd.cri.v1.images"]\nuse_local_image_pull = true')
    off = _cfg("version = 3\n")
    assert containerd.transfer_check(off, (1, 7, 27)).ok
    assert containerd.transfer_check(off, (2, 0, 5)).ok
    assert not containerd.transfer_check(off, (2, 1, 0)).ok
    assert containerd.transfer_check(on, (2, 1, 3)).ok
    assert not containerd.transfer_check(on, None).ok


def test_imports_replace_plugins_in_1x_and_merge_them_in_2x() -> None:
    main = {"version": 2, "plugins": {"p": {"a": 1, "b": {"c": 2}}}}
    imported = {"plugins": {"p": {"b": {"d": 3}}}}
    assert containerd.merge_import(main, imported)["plugins"]["p"] == {"b": {"d": 3}}
    main3 = {**main, "version": 3}
    assert containerd.merge_import(main3, imported)["plugins"]["p"] == {
        "a": 1,
        "b": {"c": 2, "d": 3},
    }


def test_versions_as_runtimes_print_them() -> None:
    assert parse_version("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1") == (
        1,
        6,
        20,
    )
    assert parse_version("containerd github.com/containerd/containerd/v2 v2.1.3 abc") == (2, 1, 3)
    assert parse_version("k3s version v1.30.4+k3s1 (98262b5d)\ngo version go1.22.5") == (1, 30, 4)
    assert parse_version("Docker version 27.3.1, build 4185ffa") == (27, 3, 1)
    assert parse_version("crio version 1.30.4\nVersion:  1.30.4") == (1, 30, 4)
    assert parse_version("no digits here") is None


# --- the other runtimes' merges ----------------------------------------------------


def _node(tmp_path: Path, **kw: Any) -> Node:
    config = Config(presets=(), upstreams=(UpstreamConfig("quay.io", "https://quay.io"),), **kw)
    return Node(config, tmp_path, MIRROR)


def test_crio_entry_keeps_what_was_in_force_with_the_mirror_first(tmp_path: Path) -> None:
    before = {
        "quay.io": {
            "prefix": "quay.io",
            "location": "quay-cache.internal",
            "blocked": False,
            "mirror": [{"location": "other.example/quay"}, {"location": "127.0.0.1:5000/quay.io"}],
        }
    }
    (entry,) = crio.merged_entries(_node(tmp_path), before)
    assert entry["location"] == "quay-cache.internal" and entry["blocked"] is False
    assert entry["mirror"] == [
        {"location": "127.0.0.1:5000/quay.io", "insecure": True},
        {"location": "other.example/quay"},
    ]


def test_k3s_and_snapshotter_merges_put_the_mirror_first_once() -> None:
    doc = yaml.safe_load(
        "mirrors:\n  quay.io:\n    endpoint: [https://m.example, http://127.0.0.1:5000]\n"
        "    rewrite: {'^(.*)$': 'x/$1'}\nconfigs:\n  m.example: {auth: {username: u}}\n"
    )
    merged = k3s.merge(doc, MIRROR, ["quay.io", "*"])
    assert merged["mirrors"]["quay.io"]["endpoint"] == [MIRROR, "https://m.example"]
    assert merged["mirrors"]["quay.io"]["rewrite"] == {"^(.*)$": "x/$1"}
    assert merged["mirrors"]["*"] == {"endpoint": [MIRROR]}
    assert merged["configs"] == doc["configs"]
    soci = snapshotters.merge(
        {"resolver": {"host": {"quay.io": {"mirrors": [{"host": "m.example"}]}}}, "x": 1},
        MIRROR,
        ["quay.io"],
    )
    assert soci["resolver"]["host"]["quay.io"]["mirrors"] == [
        {"host": "127.0.0.1:5000", "insecure": True},
        {"host": "m.example"},
    ]
    assert snapshotters.merge(soci, MIRROR, ["quay.io"]) == soci


# --- install state: backup once, restore byte for byte -----------------------------


def tree(directory: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under ``directory``: its hash, mode and modification time."""
    out = {}
    for path in sorted(directory.rglob("*")):
        st_ = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(directory))] = (
            digest,
            st_.st_mode,
            st_.st_mtime_ns if path.is_file() else 0,
        )
    return out


def test_install_backs_up_once_and_uninstall_restores_byte_for_byte(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    (certs / "quay.io").mkdir(parents=True)
    original = certs / "quay.io" / "hosts.toml"
    original.write_bytes(EXISTING)
    os.chmod(original, 0o600)
    os.utime(original, ns=(1_000_000_000, 1_000_000_000))
    before = tree(certs)

    state = Installed(certs, "containerd")
    assert state.original("quay.io/hosts.toml") == EXISTING
    said = state.apply({"quay.io/hosts.toml": b"first\n", "new.io/hosts.toml": b"new\n"})
    assert len(said) == 2 and original.read_bytes() == b"first\n"
    assert original.stat().st_mode & 0o777 == 0o600
    # A second install (a restarted pod) merges from the original and never
    # overwrites the backup; a file it no longer writes is taken back.
    again = Installed(certs, "containerd")
    assert again.original("quay.io/hosts.toml") == EXISTING
    assert again.original("new.io/hosts.toml") is None
    again.apply({"quay.io/hosts.toml": b"second\n"})
    assert not (certs / "new.io").exists()
    assert (certs / ".cacheproxy" / "backup" / "quay.io" / "hosts.toml").read_bytes() == EXISTING

    Installed(certs, "containerd").remove()
    assert tree(certs) == before


def test_uninstall_keeps_a_file_changed_since_install(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    state = Installed(certs, "containerd")
    state.apply({"a.io/hosts.toml": b"ours\n"})
    (certs / "a.io" / "hosts.toml").write_bytes(b"someone else's\n")
    said = Installed(certs, "containerd").remove()
    assert any("changed since install" in line for line in said)
    assert (certs / "a.io" / "hosts.toml").read_bytes() == b"someone else's\n"
    # Install created certs.d; with a file kept in it, it stays, with the manifest.
    assert (certs / ".cacheproxy" / "installed.json").exists()


def test_install_into_a_missing_directory_is_undone_whole(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    Installed(certs, "containerd").apply({"a.io/hosts.toml": b"x\n", "_default/hosts.toml": b"y\n"})
    Installed(certs, "containerd").remove()
    assert not certs.exists()
