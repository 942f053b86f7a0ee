"""Run cacheproxy in the test's event loop, on a loopback port."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from cacheproxy import server
from cacheproxy.app import build_app
from cacheproxy.blobs.inflight import Fills
from cacheproxy.config import ENV_PREFIX, Config, load_config
from cacheproxy.http.keys import CLUSTER, FILLS, KEEPER, UPSTREAMS
from cacheproxy.lifecycle.keeper import Keeper
from cacheproxy.peers.cluster import Cluster
from cacheproxy.upstream.pool import UpstreamPool
from tests.support.images import sha256_digest
from tests.support.ports import free_port
from tests.support.waiting import eventually


@dataclass
class RunningProxy:
    config: Config
    app: web.Application
    url: str
    host: str
    #: The listener's runner (for a look at the open client connections), if known.
    runner: web.AppRunner | None = None

    @property
    def fills(self) -> Fills:
        """The registry of fills in flight (its ``stats`` count upstream and peer GETs)."""
        return self.app[FILLS]

    @property
    def upstreams(self) -> UpstreamPool:
        return self.app[UPSTREAMS]

    @property
    def cluster(self) -> Cluster | None:
        return self.app.get(CLUSTER)

    @property
    def keeper(self) -> Keeper:
        return self.app[KEEPER]

    def write_buffers(self) -> list[int]:
        """Bytes the proxy holds in user space for each open client connection: how
        much it buffers for clients that read slowly."""
        server = self.runner.server if self.runner is not None else None
        if server is None:
            return []
        return [
            handler.transport.get_write_buffer_size()
            for handler in server.connections
            if handler.transport is not None
        ]

    def requests_started(self) -> int:
        """Requests the listener has begun to answer so far (aiohttp's count)."""
        server = self.runner.server if self.runner is not None else None
        return server.requests_count if server is not None else 0

    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = digest.split(":")
        return self.config.cache_dir / "blobs" / algorithm / hexpart[:2] / hexpart

    def temp_files(self) -> list[Path]:
        return list((self.config.cache_dir / "tmp").iterdir())

    async def idle(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait (bounded) until no fill runs: a fill outlives its clients."""
        await eventually(lambda: not self.fills.active, timeout=timeout, what="no fill running")


def blob_url(proxy: RunningProxy, name: str, digest: str) -> str:
    """The URL of blob ``digest`` of repository ``name`` at ``proxy``."""
    return f"{proxy.url}/v2/{name}/blobs/{digest}"


async def assert_cached(proxy: RunningProxy, digest: str, data: bytes) -> None:
    """Once every fill has ended, ``data`` is in the cache as ``digest``, and nothing
    unfinished is left behind."""
    await proxy.idle()
    path = proxy.blob_path(digest)
    assert path.is_file(), "the blob was not cached"
    stored = path.read_bytes()
    assert sha256_digest(stored) == digest
    assert stored == data
    assert proxy.temp_files() == []


def config_with(tmp_path: Path, upstream: str, extra: str = "") -> Path:
    """A config file (of a name of its own in ``tmp_path``) with one upstream,
    ``reg.test`` at ``upstream``, no presets, and the TOML ``extra``."""
    path = tmp_path / f"cacheproxy-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(f'presets = []\n[[upstream]]\nname = "reg.test"\nurl = "{upstream}"\n{extra}')
    return path


def _environment() -> dict[str, str]:
    """The process environment without the proxy's own settings: a test's settings
    are its flags and its config file, whatever the shell that runs pytest exports
    (but the suite's min_free: see tests/conftest.py)."""
    kept = (ENV_PREFIX + "TEST_", ENV_PREFIX + "MIN_FREE")
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | {
        k: v for k, v in os.environ.items() if k.startswith(kept)
    }


@asynccontextmanager
async def running_proxy(
    upstream_url: str | None,
    cache_dir: Path,
    bind: str = "127.0.0.1",
    config_file: Path | None = None,
    port: int | None = None,
    upstream_clock: Callable[[], float] | None = None,
    **settings: Any,
) -> AsyncIterator[RunningProxy]:
    """Start a proxy caching in ``cache_dir``; stop it on exit.

    ``upstream_url`` is the ``--upstream`` shortcut; None leaves the upstreams to
    ``config_file``. ``upstream_clock``: the upstream clients' clock (token
    lifetimes), for a test that moves time itself.
    """
    port = port or free_port(bind)
    flags = {"upstream": upstream_url, "cache_dir": cache_dir, "listen": f"{bind}:{port}"}
    flags.update(settings)
    config = load_config(file=config_file, env=_environment(), flags=flags)
    app = build_app(config, upstream_clock=upstream_clock)
    # The listener the real server uses: TLS, the header deadline, graceful close.
    listener = await server.start(app, config)
    scheme = "https" if config.tls_cert is not None else "http"
    try:
        runner = getattr(listener, "_runner", None)
        yield RunningProxy(config, app, f"{scheme}://{bind}:{port}", f"{bind}:{port}", runner)
    finally:
        await listener.close()
