"""deploy/ renders with the real kubectl kustomize: the base, the cleanup, and each
distribution's component over both; the node init containers run commands the real
command line takes, with hostPath mounts of the runtime's directories only, and
the one they write is the directory `node install` writes for that runtime."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cacheproxy import cli
from cacheproxy.config import Config
from cacheproxy.node import RUNTIMES
from cacheproxy.node.context import Node
from tests.integration.test_deploy import (  # noqa: F401 (fixtures)
    DEPLOY,
    manifests,
    only,
    pod_config,
)

COMPONENTS = sorted(p.name for p in (DEPLOY / "components").iterdir() if p.is_dir())
DISTRIBUTIONS = [c for c in COMPONENTS if c != "monitoring"]
HOST = Path("/host")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: it renders deploy/ (kubectl kustomize)", pytrace=False)
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def overlay(tmp_path: Path, base: str, components: list[str]) -> Path:
    """A user's overlay: ``base`` (deploy/ or deploy/cleanup) with components."""
    out = tmp_path / "-".join([base or "base", *components])
    out.mkdir()
    rel = os.path.relpath(DEPLOY / base, out)
    comps = [os.path.relpath(DEPLOY / "components" / c, out) for c in components]
    (out / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [rel], "components": comps})
    )
    return out


def daemonsets(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "DaemonSet"}


def check_node_containers(daemonset: dict[str, Any]) -> list[str]:
    """Check every `cacheproxy node` init container; returns the actions seen."""
    spec = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    actions = []
    for container in spec.get("initContainers", []):
        args = container.get("args", [])
        if args[:1] != ["node"]:
            continue
        parsed = cli.parser().parse_args(args)  # exits on arguments it does not take
        actions.append(parsed.action)
        assert parsed.root == HOST
        wiring = RUNTIMES[parsed.runtime]
        (writes,) = wiring.directories(Node(Config(), HOST, "http://127.0.0.1:5000"))
        writable = []
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "hostPath" not in volume:
                assert volume.get("configMap") and mount["readOnly"], mount
                continue
            # Each host path is mounted at the same path under --root.
            assert mount["mountPath"] == str(HOST) + volume["hostPath"]["path"], mount
            if not mount.get("readOnly"):
                writable.append(Path(mount["mountPath"]))
        # Only the directory install writes is writable; check writes nothing.
        assert writable == ([] if parsed.action == "check" else [writes]), (args, writable)
        if parsed.action == "check":
            assert parsed.skip == ["mirror"]  # the proxy is not running yet
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert security["allowPrivilegeEscalation"] is False
    return actions


def test_the_base_and_the_cleanup_render(tmp_path: Path) -> None:
    base = daemonsets(kustomize(DEPLOY))
    assert check_node_containers(base["cacheproxy"]) == ["check", "install"]
    # The proxy itself mounts no host directory but its cache.
    spec = base["cacheproxy"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (proxy,) = spec["containers"]
    host_mounts = [m["name"] for m in proxy["volumeMounts"] if "hostPath" in volumes[m["name"]]]
    assert host_mounts == ["cache"]
    cleanup = daemonsets(kustomize(DEPLOY / "cleanup"))
    assert check_node_containers(cleanup["cacheproxy-node-cleanup"]) == ["uninstall"]
    # The cleanup's pods are not the proxy's: no Service selects them.
    labels = cleanup["cacheproxy-node-cleanup"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] != "cacheproxy"


@pytest.mark.parametrize("component", DISTRIBUTIONS)
def test_each_distribution_renders_over_the_base_and_the_cleanup(
    component: str, tmp_path: Path
) -> None:
    installed = daemonsets(kustomize(overlay(tmp_path, "", [component])))["cacheproxy"]
    actions = check_node_containers(installed)
    if component == "talos":
        # The machine config carries the mirror: no init container edits the node.
        assert actions == []
        spec = installed["spec"]["template"]["spec"]
        assert [v["name"] for v in spec["volumes"] if "hostPath" in v] == ["cache"]
        patch = yaml.safe_load((DEPLOY / "components/talos/machine-config-patch.yaml").read_text())
        mirrors = patch["machine"]["registries"]["mirrors"]
        assert {"docker.io", "*"} <= set(mirrors)
        return
    assert actions == ["check", "install"]
    cleanup = daemonsets(kustomize(overlay(tmp_path, "cleanup", [component])))
    assert check_node_containers(cleanup["cacheproxy-node-cleanup"]) == ["uninstall"]
    runtime = {"eks": "containerd"}.get(component, component)
    for daemonset in (installed, cleanup["cacheproxy-node-cleanup"]):
        spec = daemonset["spec"]["template"]["spec"]
        for container in spec["initContainers"]:
            if container.get("args", [])[:1] == ["node"]:
                assert container["args"][container["args"].index("--runtime") + 1] == runtime


def test_monitoring_renders_and_scrapes_the_metrics_listener(tmp_path: Path) -> None:
    docs = kustomize(overlay(tmp_path, "", ["monitoring"]))
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    monitor = by_kind[("ServiceMonitor", "cacheproxy")]
    service = by_kind[("Service", "cacheproxy-metrics")]
    daemonset = by_kind[("DaemonSet", "cacheproxy")]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"]
    (proxy,) = daemonset["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports[port["targetPort"]] == port["port"]
    env = {e["name"]: e.get("value", "") for e in proxy["env"]}
    assert env["CACHEPROXY_METRICS_LISTEN"].endswith(f":{port['port']}")
    # job="cacheproxy", as the rules name it.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "cacheproxy"
    rule = by_kind[("PrometheusRule", "cacheproxy")]
    assert any('job="cacheproxy"' in r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    dashboard = by_kind[("ConfigMap", "cacheproxy-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "${datasource}" in dashboard["data"]["cacheproxy.json"]
    assert (
        service["spec"]["selector"].items()
        <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    )


def test_node_init_containers_wire_a_node_from_the_configmap_config(
    manifests: dict[tuple[str, str], dict[str, Any]],  # noqa: F811
    pod_config: Config,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The DaemonSet's node-check and node-install, as the pod runs them (its args,
    its environment, the ConfigMap's config), on a scratch node."""
    daemonset = only(manifests, "DaemonSet")
    inits = {c["name"]: c for c in daemonset["spec"]["template"]["spec"]["initContainers"]}
    config_file = tmp_path / "config.toml"
    config_file.write_text(only(manifests, "ConfigMap")["data"]["config.toml"])
    root = tmp_path / "host"
    (root / "etc" / "containerd").mkdir(parents=True)
    (root / "etc" / "containerd" / "config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        'config_path = "/etc/containerd/certs.d"\n'
    )

    def run(container: dict[str, Any], *more: str) -> int:
        for item in container["env"]:
            value = str(config_file) if item["name"] == "CACHEPROXY_CONFIG" else item["value"]
            monkeypatch.setenv(item["name"], value)
        args = [str(root) if a == "/host" else a for a in container["args"]]
        return cli.main([*args, *more])

    binary = shutil.which("containerd")
    assert binary is not None
    assert run(inits["node-check"], "--binary", binary) == 0, capsys.readouterr().out
    assert run(inits["node-install"]) == 0
    certs = root / "etc" / "containerd" / "certs.d"
    hosts = {p.parent.name: tomllib.loads(p.read_text()) for p in certs.glob("*/hosts.toml")}
    ecr = next(u.name for u in pod_config.upstreams if u.ecr)
    assert set(hosts) == {*pod_config.presets, ecr, "_default"}
    mirror = f"http://127.0.0.1:{pod_config.port}"
    assert all(list(doc["host"]) == [mirror] for doc in hosts.values())
