"""Real runtimes pull through cacheproxy with the node files `client-config` generates.

containerd (Debian's, started by the test with its own root, state and socket) uses
the generated ``hosts.toml``; podman uses the generated ``registries.conf``. Both
fall back to the registry itself when the mirror fails, silently, so every test
proves the bytes came through the proxy: a forwarder in front of the proxy sees each
blob GET (with ``?ns=`` for containerd, the registry as path prefix for podman) and
its full body, and the forwarder in front of the registry sees exactly one GET per
blob, the proxy's fill, and none from the runtime.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.clients import ProcessResult, run_process
from tests.support.forwarder import Forwarder
from tests.support.images import PushedImage, push_image
from tests.support.names import unique
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.registry import RegistryProcess
from tests.support.runtimes import CONTAINERD, CTR, PODMAN, Containerd, Podman

# The name nodes pull by. It never resolves: the runtimes reach the registry through
# the proxy, or through hosts.toml's `server` / registries.conf's `location`.
REGISTRY = "reg.test"
PULL_TIMEOUT = 60.0


def require(*binaries: str) -> None:
    """Fail (not skip) when a runtime is missing or cannot run: CI installs them."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)} (apt-get install containerd podman)", pytrace=False
        )
    if os.geteuid() != 0:
        pytest.fail("the runtime tests run containerd and podman as root", pytrace=False)


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    require(CONTAINERD, CTR)
    with Containerd(tmp_path / "containerd") as daemon:
        yield daemon


@pytest.fixture
async def image(registry: RegistryProcess) -> PushedImage:
    return await push_image(
        registry.url, unique("runtimes"), "v1", layer_sizes=(64 * 1024, 600_000)
    )


@pytest.fixture
def config_file(tmp_path: Path, forwarder: Forwarder) -> Path:
    """The proxy's config: the test registry (behind ``forwarder``) as ``reg.test``,
    and, under its host:port, for the ``_default`` test."""
    path = tmp_path / "cacheproxy.toml"
    path.write_text(
        f'presets = []\ndefault_upstream = "{REGISTRY}"\n'
        f'[[upstream]]\nname = "{REGISTRY}"\nurl = "{forwarder.url}"\n'
        f'[[upstream]]\nname = "{forwarder.host}"\nurl = "{forwarder.url}"\n'
    )
    return path


@pytest.fixture
async def front(tmp_path: Path, config_file: Path) -> AsyncIterator[tuple[RunningProxy, Forwarder]]:
    """The proxy, and a forwarder in front of it that logs what the runtime asked for."""
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config_file) as proxy,
        Forwarder(proxy.url) as fwd,
    ):
        yield proxy, fwd


async def client_config(runtime: str, config: Path, mirror: str, out: Path) -> None:
    """Run the real ``cacheproxy client-config`` command, writing under ``out``."""
    argv = [sys.executable, "-m", "cacheproxy", "client-config", runtime]
    argv += ["--config", str(config), "--mirror", mirror, "--out", str(out)]
    (await run_process(*argv, timeout=30)).check()


def assert_one_upstream_fetch(image: PushedImage, upstream: Forwarder, proxy: RunningProxy) -> None:
    """Each blob went upstream exactly once, as the proxy's fill: no runtime fallback."""
    for blob in image.blobs:
        assert upstream.count("GET", f"/blobs/{blob.digest}") == 1, blob.digest
        assert proxy.blob_path(blob.digest).exists()
    assert proxy.fills.stats.upstream_gets == len(image.blobs)


async def ctr(daemon: Containerd, *args: str) -> ProcessResult:
    return (await run_process(*daemon.ctr(*args), timeout=PULL_TIMEOUT)).check()


async def containerd_digests(daemon: Containerd, ref: str) -> tuple[str, set[str]]:
    """The manifest digest containerd recorded for ``ref``, and every digest it holds."""
    listing = (await ctr(daemon, "images", "ls")).stdout.decode()
    row = next(line.split() for line in listing.splitlines() if line.startswith(ref + " "))
    content = (await ctr(daemon, "content", "ls", "--quiet")).stdout.decode()
    return row[2], set(content.split())


async def test_containerd_pulls_through_the_proxy_with_generated_hosts_toml(
    containerd: Containerd,
    image: PushedImage,
    config_file: Path,
    forwarder: Forwarder,
    front: tuple[RunningProxy, Forwarder],
    tmp_path: Path,
) -> None:
    proxy, client_side = front
    hosts = tmp_path / "certs.d"
    await client_config("containerd", config_file, client_side.url, hosts)
    generated = tomllib.loads((hosts / REGISTRY / "hosts.toml").read_text())
    assert generated["server"] == forwarder.url
    assert generated["host"] == {client_side.url: {"capabilities": ["pull", "resolve"]}}

    ref = f"{REGISTRY}/{image.reference}"
    pull = ["images", "pull", "--snapshotter", "native", "--hosts-dir", str(hosts), ref]
    await ctr(containerd, *pull)

    manifest, content = await containerd_digests(containerd, ref)
    assert manifest == image.digest
    assert {image.digest, *(b.digest for b in image.blobs)} <= content
    # Every blob came through the proxy, whole, asked for with ?ns= (containerd's way
    # of naming the registry to a mirror), and went upstream once, as the proxy's fill.
    for blob in image.blobs:
        path = f"/v2/{image.name}/blobs/{blob.digest}?ns={REGISTRY}"
        assert client_side.count("GET", path) == 1
        assert client_side.body_bytes("GET", path) == blob.size
    assert_one_upstream_fetch(image, forwarder, proxy)

    # containerd forgets the image (and garbage-collects its blobs); pulling it again
    # is served from the proxy's cache: nothing more goes upstream.
    await ctr(containerd, "images", "rm", "--sync", ref)
    content = set((await ctr(containerd, "content", "ls", "--quiet")).stdout.decode().split())
    assert not content & {b.digest for b in image.blobs}
    await ctr(containerd, *pull)
    manifest, content = await containerd_digests(containerd, ref)
    assert manifest == image.digest
    for blob in image.blobs:
        path = f"/v2/{image.name}/blobs/{blob.digest}?ns={REGISTRY}"
        assert client_side.body_bytes("GET", path) == 2 * blob.size
    assert_one_upstream_fetch(image, forwarder, proxy)


async def test_containerd_default_hosts_toml_routes_other_registries(
    containerd: Containerd,
    image: PushedImage,
    config_file: Path,
    forwarder: Forwarder,
    front: tuple[RunningProxy, Forwarder],
    tmp_path: Path,
) -> None:
    """A registry with no directory of its own (an ECR host under the ``ecr`` preset,
    say) goes through ``_default/hosts.toml``; its host:port arrives URL-encoded."""
    proxy, client_side = front
    hosts = tmp_path / "certs.d"
    await client_config("containerd", config_file, client_side.url, hosts)
    shutil.rmtree(hosts / forwarder.host)
    assert "server" not in tomllib.loads((hosts / "_default" / "hosts.toml").read_text())

    ref = f"{forwarder.host}/{image.reference}"
    await ctr(
        containerd, "images", "pull", "--snapshotter", "native", "--hosts-dir", str(hosts), ref
    )

    manifest, content = await containerd_digests(containerd, ref)
    assert manifest == image.digest
    assert {b.digest for b in image.blobs} <= content
    ns = forwarder.host.replace(":", "%3A")
    for blob in image.blobs:
        assert client_side.body_bytes("GET", f"/blobs/{blob.digest}?ns={ns}") == blob.size
    assert_one_upstream_fetch(image, forwarder, proxy)


async def test_podman_pulls_through_the_proxy_with_generated_registries_conf(
    image: PushedImage,
    config_file: Path,
    forwarder: Forwarder,
    front: tuple[RunningProxy, Forwarder],
    tmp_path: Path,
) -> None:
    require(PODMAN)
    proxy, client_side = front
    confd = tmp_path / "registries.conf.d"
    await client_config("cri-o", config_file, client_side.url, confd)
    (conf_file,) = confd.iterdir()
    generated = tomllib.loads(conf_file.read_text())
    # reg.test has a mirror; the host:port upstream cannot be a path prefix.
    (entry,) = generated["registry"]
    assert entry["prefix"] == REGISTRY
    assert entry["location"] == forwarder.host and entry["insecure"] is True
    assert entry["mirror"] == [{"location": f"{client_side.host}/{REGISTRY}", "insecure": True}]

    ref = f"{REGISTRY}/{image.reference}"
    with Podman(tmp_path / "podman") as podman:
        env = {**podman.env, "CONTAINERS_REGISTRIES_CONF": str(conf_file)}
        (await run_process(*podman.argv("pull", ref), env=env, timeout=PULL_TIMEOUT)).check()
        listing = podman.argv("images", "--digests", "--format", "{{.Digest}}", ref)
        listed = (await run_process(*listing, env=env, timeout=PULL_TIMEOUT)).check()
    assert listed.stdout.decode().split() == [image.digest]
    # CRI-O and podman name the registry in the path: /v2/reg.test/<name>/...
    for blob in image.blobs:
        path = f"/v2/{REGISTRY}/{image.name}/blobs/{blob.digest}"
        assert ("GET", path) in client_side.requests
        assert client_side.body_bytes("GET", path) == blob.size
    assert_one_upstream_fetch(image, forwarder, proxy)
