"""Shared fixtures: a real upstream registry (plain, or behind a token server), a
fault-injecting forwarder, a proxy in front of it and a client session, moto's S3,
a cluster's peer secret, and a blob store on disk."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.layout import CacheLayout
from cacheproxy.store.files import BlobStore
from tests.support.clients import SKOPEO
from tests.support.cluster import SECRET
from tests.support.forwarder import Forwarder
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.registry import DOCKER_REGISTRY, RegistryProcess
from tests.support.s3 import AWS_ENV, MotoS3
from tests.support.tokenserver import TokenServer

# The proxy keeps the larger of 10 GiB and 20% of its disk free by default (clear of
# the kubelet's eviction thresholds), which on a test machine depends on what else
# the disk holds: the suite's proxies, in process and as commands, keep 64 MiB free,
# so the machine's own disk use decides no test (tests of min_free set their own).
os.environ["CACHEPROXY_MIN_FREE"] = "64MiB"

_REQUIRED = {
    DOCKER_REGISTRY: "apt-get install docker-registry",
    SKOPEO: "apt-get install skopeo",
    # The per-connection throttle of the segment tests (as the benchmarks use).
    "nginx": "apt-get install nginx-light",
}


@pytest.fixture(autouse=True)
def no_handler_crashes(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test during which an in-process server logged a traceback.

    aiohttp only logs an exception raised in a handler (and, with
    ``filterwarnings=error``, a warning raised there); the client may still see a
    plausible answer, so a crash would otherwise pass unnoticed. Deliberate error
    lines without a traceback (a digest mismatch, say) are allowed.
    """
    yield
    crashes = [
        r
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR and (r.exc_info or r.name.startswith("aiohttp"))
    ]
    assert not crashes, [r.getMessage() + (r.exc_text or "") for r in crashes]


@pytest.fixture(scope="session")
def require_binaries() -> None:
    """Fail (not skip) when a real component the integration tests need is missing.

    A skipped integration suite looks green in CI; a missing binary is a broken
    environment, so say which one and how to install it.
    """
    missing = [f"{name} ({hint})" for name, hint in _REQUIRED.items() if not shutil.which(name)]
    if missing:
        pytest.fail("missing required binaries: " + ", ".join(missing), pytrace=False)


@pytest.fixture(scope="session")
def registry(
    require_binaries: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    """One distribution registry for the whole session. Do not stop it: use fresh_registry."""
    with RegistryProcess(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def fresh_registry(require_binaries: None, tmp_path: Path) -> Iterator[RegistryProcess]:
    """A registry of this test's own, free to be stopped and started again."""
    with RegistryProcess(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
async def token_server(tmp_path: Path) -> AsyncIterator[TokenServer]:
    async with TokenServer(tmp_path / "tokens", expires_in=60) as server:
        yield server


@pytest.fixture
def token_registry(
    require_binaries: None, token_server: TokenServer, tmp_path: Path
) -> RegistryProcess:
    reg = RegistryProcess(tmp_path / "registry", token_auth=token_server.registry_auth())
    reg.start()
    yield reg  # type: ignore[misc]
    reg.stop()


@pytest.fixture
async def forwarder(registry: RegistryProcess) -> AsyncIterator[Forwarder]:
    """A :class:`Forwarder` in front of the session registry, on this test's loop."""
    async with Forwarder(registry.url) as fwd:
        yield fwd


@pytest.fixture
async def proxy(forwarder: Forwarder, tmp_path: Path) -> AsyncIterator[RunningProxy]:
    """A proxy with its defaults in front of :func:`forwarder`, on this test's loop."""
    async with running_proxy(forwarder.url, tmp_path / "cache") as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session: bodies as sent (never decompressed), every request bounded."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(auto_decompress=False, timeout=timeout) as session:
        yield session


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    """An empty blob store on disk, ready for use."""
    store = BlobStore(CacheLayout(tmp_path / "cache"))
    store.prepare()
    return store


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server on loopback, for the shared tier (each test makes its bucket)."""
    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS environment moto's S3 server accepts (test keys, no metadata lookups)."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A cluster's shared peer secret, in a file as an operator writes it."""
    path = tmp_path / "peer-secret"
    path.write_bytes(SECRET + b"\n")
    return path


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's AWS (ECR, STS) with test credentials in the environment."""
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield
