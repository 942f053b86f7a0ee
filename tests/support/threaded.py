"""The in-process proxy on an event loop of its own, in a background thread.

Synchronous test code (a hypothesis property, a blocking raw-socket client) cannot
share the event loop that serves the proxy: it would block it. :class:`ThreadedProxy`
runs :func:`~tests.support.proxy.running_proxy` on a private loop in a thread, so the
same process (its logging, its audit hooks) still sees everything the proxy does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tests.support.proxy import RunningProxy, running_proxy

T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 40.0


class ThreadedProxy:
    """``with ThreadedProxy(upstream_url, cache_dir, **settings) as tp:`` ...

    ``tp.address`` is ``(host, port)``; :meth:`call` runs a coroutine function on the
    proxy's loop and returns its result (bounded).
    """

    def __init__(self, upstream_url: str | None, cache_dir: Path, **settings: Any) -> None:
        self._args = (upstream_url, cache_dir)
        self._settings = settings
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="threaded-proxy", daemon=True)
        self.running: RunningProxy | None = None

    @property
    def proxy(self) -> RunningProxy:
        assert self.running is not None, "not started"
        return self.running

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.proxy.host.rsplit(":", 1)
        return host, int(port)

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run ``fn()`` on the proxy's loop; its result."""
        assert self._loop is not None

        async def wrapper() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError("the threaded proxy did not start")
        if self._error is not None:
            self._thread.join(STOP_TIMEOUT)
            raise RuntimeError("the threaded proxy failed to start") from self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("the threaded proxy did not stop")

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_proxy(*self._args, **self._settings) as running:
            self.running = running
            self._ready.set()
            await self._stop.wait()
