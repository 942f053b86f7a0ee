"""A cluster of in-process proxies in peer mode, and the secret its members share."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

from tests.support.ports import free_port
from tests.support.proxy import RunningProxy, running_proxy

#: The peers' shared secret (the ``secret_file`` fixture writes it for a cluster).
SECRET = b"cluster-secret-for-the-tests-0123456789"


async def start_cluster(
    stack: AsyncExitStack,
    upstream: str,
    tmp_path: Path,
    secret_file: Path,
    k: int,
    **settings: object,
) -> list[RunningProxy]:
    """``k`` proxies on loopback, each listing all of them as peers; ``stack`` stops them."""
    ports = [free_port() for _ in range(k)]
    urls = tuple(f"http://127.0.0.1:{p}" for p in ports)
    nodes = []
    for i, port in enumerate(ports):
        nodes.append(
            await stack.enter_async_context(
                running_proxy(
                    upstream,
                    tmp_path / f"node{i}",
                    port=port,
                    peers=urls,
                    self_url=urls[i],
                    peer_secret_file=secret_file,
                    **settings,
                )
            )
        )
    return nodes
