"""The upstream registries: one client each, behind the egress rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ..config import Config, ConfigError
from ..upstream.egress import egress_deny
from ..upstream.pool import UpstreamPool


@asynccontextmanager
async def open_upstreams(
    config: Config, *, check: bool = False, clock: Callable[[], float] | None = None
) -> AsyncIterator[UpstreamPool]:
    """The pool of upstream clients. ``check``: read every configured login at start
    (the server: a missing file is said before the first pull, not at it).
    ``clock``: the clients' monotonic clock (token lifetimes, retry budgets)."""
    try:
        # Reads the node's addresses when egress_deny names "node": in a thread.
        deny = await asyncio.to_thread(egress_deny, config.egress_deny)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    upstreams = UpstreamPool(config, clock=clock, deny=deny)
    try:
        await upstreams.start()
        if check:
            await asyncio.to_thread(upstreams.check)
        yield upstreams
    finally:
        await upstreams.close()
