"""The Dockerfile and the Kubernetes manifests in deploy/, checked against the code.

No container engine or cluster runs here, so these are static checks of the fields
that matter, cross-checked with what the package really does: the config in the
ConfigMap loads with ``load_config`` under the pod's environment; ports, probes and
volumes agree with it; the probe paths and the image's HEALTHCHECK answer on a
running proxy.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from cacheproxy import cli
from cacheproxy.config import Config, UpstreamConfig, load_config
from cacheproxy.listeners import exposure_problem
from cacheproxy.server import SHUTDOWN_TIMEOUT
from cacheproxy.upstream.credentials import static_login
from tests.support.clients import run_process
from tests.support.forwarder import Forwarder
from tests.support.ports import free_port
from tests.support.proxy import running_proxy
from tests.support.tls import self_signed

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NODE_IP = "10.0.7.21"

# --- Dockerfile --------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        (args,) = self.all(keyword)
        return args

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                out[key] = value
        return out


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile: instructions with continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    args_default: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG" and not stages:
            name, _, value = args.partition("=")
            args_default[name] = value
        elif keyword == "FROM":
            for name, value in args_default.items():
                args = args.replace("${" + name + "}", value)
            words = args.split()
            stages.append(Stage(words[0], words[2] if len(words) == 3 else None))
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def image_config(stages: list[Stage], monkeypatch: pytest.MonkeyPatch) -> Config:
    """The Config the image runs with on its defaults (no file, no CACHEPROXY_* set)."""
    env = stages[-1].env()
    # The default cache_dir reads XDG_CACHE_HOME from the process environment.
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    return load_config(env=env)


def test_dockerfile_is_multi_stage_slim_and_non_root(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    final = stages[-1]
    assert all("-slim" in s.base for s in stages)
    # The runtime stage takes the build's virtualenv, nothing else: no wheels, no pip
    # cache, no compiler.
    copies = final.all("COPY")
    assert copies and all(c.startswith(f"--from={stages[0].name} /opt/") for c in copies)
    # The base image's Python satisfies requires-python.
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    version = final.base.split(":")[1].split("-")[0]
    assert wanted == ">=3.11" and tuple(map(int, version.split("."))) >= (3, 11)
    # Every path the build copies exists and none is kept out by .dockerignore.
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for stage in stages:
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _ = copy.split()
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src not in ignored
    assert {".git", "tests"} <= ignored


def test_dockerfile_pins_its_base_image_and_every_package(stages: list[Stage]) -> None:
    # An exact Python release (a digest may follow, as a release pipeline adds it),
    # never a moving tag such as python:3.11-slim.
    for stage in stages:
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", stage.base)
    build = stages[0]
    installs = [run for run in build.all("RUN") if "pip install" in run]
    assert installs, "the build stage installs the packages"
    # Nothing is resolved: the pinned set as it is, then cacheproxy without deps,
    # each checked; the build backend is pinned by PIP_CONSTRAINT (build isolation).
    assert all(run.count("pip install --no-deps") == run.count("pip install") for run in installs)
    assert "--requirement constraints.txt" in installs[0]
    assert all("pip check" in run for run in installs)
    workdir = build.one("WORKDIR")
    assert build.env()["PIP_CONSTRAINT"] == f"{workdir}/constraints.txt"
    assert any(copy.split()[0] == "constraints.txt" for copy in build.all("COPY"))


def test_dockerfile_user_volume_port_and_entrypoint(
    stages: list[Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    final = stages[-1]
    uid, _, gid = final.one("USER").partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it.
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0 and int(gid) != 0
    # No CACHEPROXY_* in the image: it would outrank a mounted config file.
    assert not [k for k in final.env() if k.startswith("CACHEPROXY_")]
    config = image_config(stages, monkeypatch)
    # The default cache directory is the volume, and the user owns it.
    assert json.loads(final.one("VOLUME")) == [str(config.cache_dir)]
    assert any(f"chown {uid}:{gid} {config.cache_dir}" in run for run in final.all("RUN"))
    assert final.one("EXPOSE") == str(config.port)
    assert json.loads(final.one("ENTRYPOINT")) == ["cacheproxy"]
    assert json.loads(final.one("CMD")) == ["serve"]
    assert final.one("STOPSIGNAL") == "SIGTERM"


def healthcheck_argv(stages: list[Stage]) -> list[str]:
    options, _, command = stages[-1].one("HEALTHCHECK").partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert isinstance(argv, list) and argv[0] == "python"
    return [sys.executable, *argv[1:]]


async def test_dockerfile_healthcheck_asks_healthz_of_the_running_proxy(
    stages: list[Stage], tmp_path: Path
) -> None:
    argv = healthcheck_argv(stages)
    async with (
        running_proxy(None, tmp_path / "cache") as proxy,
        Forwarder(proxy.url) as front,
    ):
        # It finds the proxy the way serve does: here CACHEPROXY_LISTEN.
        healthy = await run_process(*argv, env={"CACHEPROXY_LISTEN": front.host}, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
        assert front.requests == [("GET", "/healthz")]
    # Nobody listens there any more: unhealthy, with the reason.
    down = await run_process(*argv, env={"CACHEPROXY_LISTEN": front.host}, timeout=30)
    assert down.returncode == 1
    assert "unhealthy" in down.stderr


async def test_dockerfile_healthcheck_speaks_tls_when_the_proxy_does(
    stages: list[Stage], tmp_path: Path
) -> None:
    argv = healthcheck_argv(stages)
    cert, key = self_signed(tmp_path)
    async with running_proxy(None, tmp_path / "cache", tls_cert=cert, tls_key=key) as proxy:
        env = {
            "CACHEPROXY_LISTEN": proxy.host,
            "CACHEPROXY_TLS_CERT": str(cert),
            "CACHEPROXY_TLS_KEY": str(key),
        }
        healthy = await run_process(*argv, env=env, timeout=30)
        assert healthy.returncode == 0, healthy.stderr


# --- Kubernetes ---------------------------------------------------------------------


def load_manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> document, for every manifest kustomization.yaml lists."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / resource).read_text()):
            if doc:
                assert (
                    doc["metadata"].get("namespace", kustomization["namespace"])
                    == (kustomization["namespace"])
                )
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    return load_manifests()


def only(docs: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for (k, _), d in docs.items() if k == kind]
    return doc


def proxy_container(daemonset: dict[str, Any]) -> dict[str, Any]:
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    return container


def pod_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it ($(VAR) expanded)."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
            env[item["name"]] = NODE_IP
            continue
        value = item["value"]
        for name, known in env.items():
            value = value.replace(f"$({name})", known)
        env[item["name"]] = value
    return env


def mounted_file(daemonset: dict[str, Any], path: Path) -> tuple[dict[str, Any], str]:
    """The volume a file in the container comes from, and its key in that volume."""
    spec = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in proxy_container(daemonset)["volumeMounts"]:
        if mount["mountPath"] == str(path) and "subPath" in mount:
            return volumes[mount["name"]], mount["subPath"]
        if mount["mountPath"] == str(path.parent):
            return volumes[mount["name"]], path.name
    raise AssertionError(f"nothing is mounted at {path}")


@pytest.fixture(scope="module")
def pod_config(
    manifests: dict[tuple[str, str], dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Config:
    """The ConfigMap's config, loaded the way the pod loads it."""
    daemonset = only(manifests, "DaemonSet")
    env = pod_env(proxy_container(daemonset))
    volume, key = mounted_file(daemonset, Path(env["CACHEPROXY_CONFIG"]))
    configmap = manifests[("ConfigMap", volume["configMap"]["name"])]
    path = tmp_path_factory.mktemp("configmap") / key
    path.write_text(configmap["data"][key])
    return load_config(file=path, env=env)


def http_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as a number."""
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(found)


def test_configmap_config_is_realistic(pod_config: Config) -> None:
    ups = {u.name: u for u in pod_config.upstreams}
    assert ups["docker.io"].docker_config is not None
    assert ups["ghcr.io"].password_file is not None
    ecr = [u for u in ups.values() if u.ecr]
    assert ecr and ecr[0].region == "us-west-2"
    assert pod_config.default_upstream == "docker.io"
    assert pod_config.peer_mode
    assert pod_config.self_url == f"http://{NODE_IP}:{pod_config.peer_port}"


def test_daemonset_ports_and_network_agree_with_the_config(
    manifests: dict[tuple[str, str], dict[str, Any]], pod_config: Config
) -> None:
    daemonset = only(manifests, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    container = proxy_container(daemonset)
    # Clients on the node's loopback only; peers and probes on the node's IP.
    assert pod_config.host == "127.0.0.1"
    assert pod_config.peer_listen == f"{NODE_IP}:{pod_config.peer_port}"
    ports = {p["name"]: p for p in container["ports"]}
    assert set(ports) == {"peer", "metrics"}
    assert ports["peer"]["containerPort"] == pod_config.peer_port
    # Prometheus scrapes the metrics listener on the node's IP (the client
    # listener answers /metrics on loopback only).
    assert pod_config.metrics_listen == f"{NODE_IP}:{ports['metrics']['containerPort']}"
    for port in ports.values():
        assert port.get("hostPort", port["containerPort"]) == port["containerPort"]
    # It holds logins, so the same config on a network-wide listener is refused.
    assert exposure_problem(pod_config) is None
    wide = replace(pod_config, listen=f"0.0.0.0:{pod_config.port}")
    problem = exposure_problem(wide)
    assert problem is not None and "ghcr.io" in problem
    # On the node's network, still resolving cluster names (the peers' Service).
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= (
        daemonset["spec"]["template"]["metadata"]["labels"].items()
    )
    for c in [*spec.get("initContainers", []), container]:
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert c["image"] == container["image"]
    assert container["args"] == ["serve"]


def test_daemonset_cache_volume_user_and_shutdown(
    manifests: dict[tuple[str, str], dict[str, Any]],
    pod_config: Config,
    stages: list[Stage],
) -> None:
    daemonset = only(manifests, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    # The cache is a hostPath at the config's cache_dir, which is the image's volume.
    volume, _ = mounted_file(daemonset, pod_config.cache_dir / "x")
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    assert json.loads(stages[-1].one("VOLUME")) == [str(pod_config.cache_dir)]
    # The pod runs as the image's user, and the init container hands it the hostPath.
    uid, _, gid = stages[-1].one("USER").partition(":")
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))
    (init,) = [c for c in spec["initContainers"] if c["name"] == "cache-owner"]
    assert init["command"] == ["chown", f"{uid}:{gid}", str(pod_config.cache_dir)]
    assert init["volumeMounts"] == [
        {"name": volume["name"], "mountPath": str(pod_config.cache_dir)}
    ]
    # Transfers in flight get the app's whole drain time, plus room to flush.
    assert spec["terminationGracePeriodSeconds"] >= SHUTDOWN_TIMEOUT + 10


def test_every_credential_file_comes_from_a_secret(
    manifests: dict[tuple[str, str], dict[str, Any]], pod_config: Config, tmp_path: Path
) -> None:
    daemonset = only(manifests, "DaemonSet")
    examples = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((DEPLOY / "secrets.example.yaml").read_text())
    }
    files = [pod_config.peer_secret_file]
    for up in pod_config.upstreams:
        files += [up.password_file, up.docker_config]
    checked = 0
    for path in files:
        if path is None:
            continue
        volume, key = mounted_file(daemonset, path)
        secret = examples[volume["secret"]["secretName"]]
        assert key in secret["stringData"], path
        assert volume["secret"].get("optional") is not True  # the proxy needs them
        checked += 1
    assert checked == 3
    # The example Docker Hub secret is in the format the proxy reads.
    (hub,) = [u for u in pod_config.upstreams if u.docker_config is not None]
    secret = examples[mounted_file(daemonset, hub.docker_config)[0]["secret"]["secretName"]]
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    local = tmp_path / "config.json"
    local.write_text(secret["stringData"][".dockerconfigjson"])
    login = static_login(UpstreamConfig(hub.name, hub.url, docker_config=local))
    assert login == ("<user>", "<access token>")


def test_peer_dns_name_is_the_headless_service(
    manifests: dict[tuple[str, str], dict[str, Any]], pod_config: Config
) -> None:
    assert pod_config.peers_dns is not None
    host, _, port = pod_config.peers_dns.rpartition(":")
    name, namespace, *rest = host.split(".")
    assert rest in (["svc"], ["svc", "cluster", "local"])
    service = manifests[("Service", name)]
    assert service["metadata"]["namespace"] == namespace
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    daemonset = only(manifests, "DaemonSet")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (svc_port,) = service["spec"]["ports"]
    container = proxy_container(daemonset)
    assert svc_port["port"] == int(port) == pod_config.peer_port
    assert http_port(container, svc_port["targetPort"]) == pod_config.peer_port


async def test_probes_point_at_endpoints_a_running_proxy_answers(
    manifests: dict[tuple[str, str], dict[str, Any]], pod_config: Config, tmp_path: Path
) -> None:
    container = proxy_container(only(manifests, "DaemonSet"))
    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The kubelet probes the peer listener (it cannot reach the node's loopback).
    peer = f"127.0.0.1:{free_port()}"
    async with (
        running_proxy(None, tmp_path / "cache", peer_listen=peer) as proxy,
        aiohttp.ClientSession() as http,
    ):
        for kind, probe in probes.items():
            assert http_port(container, probe["httpGet"]["port"]) == pod_config.peer_port, kind
            async with http.get(f"http://{peer}" + probe["httpGet"]["path"]) as resp:
                assert resp.status == 200, kind
        # ... which serves nothing else: no registry API for a pod that reaches it.
        async with http.get(f"http://{peer}/v2/library/alpine/manifests/3") as resp:
            assert resp.status == 404
        async with http.get(f"{proxy.url}/v2/") as resp:
            assert resp.status == 200


def test_node_files_from_the_configmap_config(
    manifests: dict[tuple[str, str], dict[str, Any]],
    pod_config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The node step of docs/deploy.md: client-config on the ConfigMap's config."""
    configmap = only(manifests, "ConfigMap")
    config_file = tmp_path / "cacheproxy.toml"
    config_file.write_text(configmap["data"]["config.toml"])
    # Peer settings need a self URL to load; the node files do not use it.
    monkeypatch.setenv("CACHEPROXY_SELF_URL", "http://127.0.0.1:5001")
    out = tmp_path / "certs.d"
    argv = ["client-config", "containerd", "--config", str(config_file), "--out", str(out)]
    assert cli.main(argv) == 0
    hosts = {p.parent.name: tomllib.loads(p.read_text()) for p in out.glob("*/hosts.toml")}
    ecr = next(u.name for u in pod_config.upstreams if u.ecr)
    assert set(hosts) == {*pod_config.presets, ecr, "_default"}
    # Each node's runtime asks its own node's proxy (hostNetwork) first.
    mirror = f"http://127.0.0.1:{pod_config.port}"
    assert all(
        doc["host"] == {mirror: {"capabilities": ["pull", "resolve"]}} for doc in hosts.values()
    )
