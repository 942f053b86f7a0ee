"""Fixtures of the conformance suite: a blob in the real registry, and each source."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.sources.rig import KINDS, Kind, PushedBlob, Subject, open_subject
from tests.support.forwarder import Forwarder
from tests.support.images import push_blob, random_bytes
from tests.support.names import unique
from tests.support.registry import RegistryProcess
from tests.support.s3 import MotoS3

#: Over a megabyte, so every source sends it in several chunks (the forwarder's
#: 64 KiB, a fill reader's 1 MiB) and a fault can land well inside it.
SIZE = 1_234_567


@pytest.fixture
async def blob(registry: RegistryProcess, request: pytest.FixtureRequest) -> PushedBlob:
    """A blob of this test's own, pushed straight to the registry (not through the
    forwarder, whose counts are then the source's traffic alone)."""
    repo = unique("sources")
    data = random_bytes(SIZE, request.node.nodeid)
    digest = await push_blob(registry.url, repo, data)
    return PushedBlob(repo, digest, data)


@pytest.fixture(params=KINDS, ids=lambda kind: kind.name)
async def subject(
    request: pytest.FixtureRequest,
    forwarder: Forwarder,
    tmp_path: Path,
    blob: PushedBlob,
    moto: MotoS3,
) -> AsyncIterator[Subject]:
    """One source of the chain, reaching the registry through ``forwarder``."""
    kind: Kind = request.param
    async with open_subject(kind, forwarder, tmp_path, blob, moto) as subject:
        yield subject
