"""Who is in the cluster: static URLs, a DNS name re-resolved, or a file re-read.

Sources are polled by one owned background task; readers see a plain list. Health
is local knowledge: a peer that failed is avoided for a while, then tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

POLL_SECONDS = 3.0


def normalize_url(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}"


class Membership:
    """The current member URLs (this node's own included) and their health."""

    def __init__(
        self,
        self_url: str,
        static: tuple[str, ...] = (),
        dns: str | None = None,
        file: Path | None = None,
        backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.self_url = normalize_url(self_url)
        self._static = [normalize_url(u) for u in static]
        self._dns = dns
        self._file = file
        self._file_mtime: float | None = None
        self._from_dns: list[str] = []
        self._from_file: list[str] = []
        self._backoff = backoff
        self._clock = clock
        self._poll = poll
        self._bad_until: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def members(self) -> list[str]:
        """Every known member, this node included, in a stable order."""
        return sorted({*self._static, *self._from_dns, *self._from_file, self.self_url})

    def peers(self) -> list[str]:
        """The healthy members other than this node."""
        now = self._clock()
        return [
            m for m in self.members() if m != self.self_url and self._bad_until.get(m, 0.0) <= now
        ]

    def mark_bad(self, url: str, reason: str) -> None:
        if self._bad_until.get(url, 0.0) <= self._clock():
            log.warning("peer %s avoided for %.0f s: %s", url, self._backoff, reason)
        self._bad_until[url] = self._clock() + self._backoff

    def health(self) -> dict[str, str]:
        now = self._clock()
        return {
            m: "self"
            if m == self.self_url
            else ("avoided" if self._bad_until.get(m, 0.0) > now else "healthy")
            for m in self.members()
        }

    async def start(self) -> None:
        await self.refresh()
        if self._dns or self._file:
            self._task = asyncio.create_task(self._poller(), name="peer membership")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> None:
        if self._dns:
            await self._resolve()
        if self._file is not None:
            await asyncio.to_thread(self._read_file)

    async def _poller(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self.refresh()
            except Exception:  # a bad poll must not end membership updates
                log.exception("peer membership refresh failed")

    async def _resolve(self) -> None:
        assert self._dns is not None
        name, _, port = self._dns.rpartition(":")
        scheme = urlsplit(self.self_url).scheme or "http"
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, int(port), type=socket.SOCK_STREAM
            )
        except OSError as exc:
            # Keep the last answer: a DNS hiccup must not empty the cluster.
            log.warning("resolving peers %s failed: %s", self._dns, exc)
            return
        urls = []
        for family, _, _, _, sockaddr in infos:
            host = str(sockaddr[0])
            host = f"[{host}]" if family == socket.AF_INET6 else host
            urls.append(f"{scheme}://{host}:{port}")
        found = sorted(set(urls))
        if found != self._from_dns:
            log.info("peers from %s: %s", self._dns, ", ".join(found) or "none")
            self._from_dns = found

    def _read_file(self) -> None:
        assert self._file is not None
        try:
            mtime = self._file.stat().st_mtime
            if mtime == self._file_mtime:
                return
            lines = self._file.read_text().splitlines()
        except OSError as exc:
            log.warning("reading peers file %s failed: %s", self._file, exc)
            return
        self._file_mtime = mtime
        found = sorted(
            {normalize_url(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
        )
        if found != self._from_file:
            log.info("peers from %s: %s", self._file, ", ".join(found) or "none")
            self._from_file = found
