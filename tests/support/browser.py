"""Debian's chromium, headless, driven over the DevTools protocol with aiohttp.

No browser download and no driver: chromium is started with
``--remote-debugging-port=0`` (it prints the port it bound), and one page target is
driven through its websocket. Every console message, uncaught exception and
browser log entry (failed loads, CSP violations) is collected, so a test can assert
that a page produced none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.process import stop_async_process
from tests.support.waiting import eventually

CHROMIUM = "chromium"
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")

# Headless and quiet: no GPU, no first-run UI, no background calls to Google.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


@dataclass
class Page:
    """One browser tab over a DevTools websocket."""

    ws: aiohttp.ClientWebSocketResponse
    #: ``(kind, text)`` for console errors/warnings, exceptions and browser log errors.
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: Every console message, any level: ``(level, text)``.
    console: list[tuple[str, str]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _loaded: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (raises on a protocol error)."""
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        async with asyncio.timeout(30):
            return await fut

    async def read(self) -> None:
        """Dispatch answers and record events until the socket closes."""
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            else:
                self._event(data.get("method", ""), data.get("params", {}))
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools socket closed"))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append((params["type"], text))
            if params["type"] in ("error", "assert", "warning"):
                self.problems.append((f"console.{params['type']}", text))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.problems.append(("exception", text))
        elif method == "Log.entryAdded":
            entry = params["entry"]
            if entry["level"] in ("error", "warning"):
                self.problems.append((f"log.{entry['source']}", entry["text"]))

    async def goto(self, url: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Navigate and wait for the load event."""
        self._loaded.clear()
        await self.send("Page.navigate", url=url)
        async with asyncio.timeout(timeout):
            await self._loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (awaited if it is a promise)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:  # noqa: ASYNC109
        """Poll (bounded) until a JavaScript expression is truthy; return its value."""
        what = f"{expression!r} in the page"
        check = functools.partial(self.evaluate, expression)
        return await eventually(check, timeout=timeout, interval=0.05, what=what)


@asynccontextmanager
async def chromium_page(profile: Path) -> AsyncIterator[Page]:
    """A fresh headless chromium (profile in ``profile``) and one page in it."""
    binary = shutil.which(CHROMIUM)
    if binary is None:
        raise RuntimeError("chromium not found: apt-get install chromium")
    proc = await asyncio.create_subprocess_exec(
        binary,
        *_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    drain: asyncio.Task[None] | None = None
    reader: asyncio.Task[None] | None = None
    try:
        assert proc.stderr is not None
        browser_ws = await _devtools_url(proc.stderr)
        # Keep reading stderr so chromium never blocks on a full pipe.
        drain = asyncio.create_task(_drain(proc.stderr))
        port = re.search(r":(\d+)/", browser_ws)
        assert port is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port.group(1)}/json/list") as resp:
                targets = await resp.json()
            target = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                reader = asyncio.create_task(page.read())
                for domain in ("Page", "Runtime", "Log"):
                    await page.send(f"{domain}.enable")
                yield page
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await stop_async_process(proc)
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def _devtools_url(stderr: asyncio.StreamReader) -> str:
    seen = []
    async with asyncio.timeout(30):
        while True:
            line = await stderr.readline()
            if not line:
                raise RuntimeError("chromium exited: " + b"".join(seen).decode(errors="replace"))
            seen.append(line)
            m = _LISTENING.search(line)
            if m:
                return m.group(1).decode()


async def _drain(stderr: asyncio.StreamReader) -> None:
    while await stderr.read(65536):
        pass
