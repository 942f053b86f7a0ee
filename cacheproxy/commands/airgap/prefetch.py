"""``cacheproxy prefetch``: warm the cache with images, through the server's own code
(one fill per blob, every byte verified), with one progress line."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO

from ...blobs.source import Want
from ...config import Config
from ...errors import RegistryError
from ...manifests.images import blobs_of
from ...oci import ImageRef, parse_digest, parse_ref
from ...runtime import Runtime, open_runtime
from .images import image_manifests, related_manifests


async def prefetch(
    config: Config,
    images: Iterable[str],
    platform: str | None,
    concurrency: int = 4,
    referrers: bool = True,
) -> int:
    """Warm the cache with ``images`` (and, with ``referrers``, what travels with each
    manifest of theirs: referrers, cosign's tags); returns how many failed."""
    refs = [parse_ref(i) for i in images]
    progress = PrefetchProgress()
    failures = 0
    async with open_runtime(config) as rt:
        fetch = _Fetch(rt, asyncio.Semaphore(concurrency), progress, referrers)
        ticker = asyncio.create_task(progress.ticker())
        try:
            for ref in refs:
                if not await fetch.image(ref, platform):
                    failures += 1
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    return failures


@dataclass
class _Fetch:
    """One image's blobs at a time, ``gate`` of them at once."""

    rt: Runtime
    gate: asyncio.Semaphore
    progress: PrefetchProgress
    referrers: bool = True

    async def image(self, ref: ImageRef, platform: str | None) -> bool:
        """Every blob of ``ref`` (of ``platform``) cached; False, said why, if not."""
        out = self.progress.out
        try:
            manifests, name = await image_manifests(self.rt, ref, platform)
            if self.referrers:
                up = self.rt.upstreams.get(ref.host)
                for digest, _, _ in list(manifests):
                    for related in await related_manifests(self.rt, up, name, digest):
                        manifests.extend(related.fetched())
            blobs = blobs_of(manifests)
            self.progress.total += sum(blobs.values())
            await asyncio.gather(*(self.blob(ref.host, name, d, s) for d, s in blobs.items()))
            print(f"\r{ref.text}: {len(blobs)} blobs cached" + " " * 30, file=out)
            return True
        except (RegistryError, ValueError, KeyError) as exc:
            message = exc.message if isinstance(exc, RegistryError) else str(exc)
            print(f"\r{ref.text}: failed: {message}", file=out)
            return False

    async def blob(self, up_host: str | None, name: str, digest: str, size: int) -> None:
        """One blob read through the chain, so a fill brings it into the cache."""
        rt, progress = self.rt, self.progress
        async with self.gate:
            want = Want(rt.upstreams.get(up_host), name, parse_digest(digest))
            async with rt.clients.blobs.open(want) as body:
                fill = rt.fills.running(want)
                if fill is not None:
                    progress.moving.append(fill.progress)
                try:
                    await body.final_size()
                finally:
                    if fill is not None:
                        progress.moving.remove(fill.progress)
            if not rt.store.exists(want.digest):
                raise RegistryError(f"{digest} was not cached: the disk is nearly full")
            progress.blob_done(digest, size)


@dataclass
class PrefetchProgress:
    """Bytes, rate and ETA: one updating line on a terminal, plain lines otherwise."""

    out: IO[str] = field(default_factory=lambda: sys.stderr)
    total: int = 0
    done: int = 0
    blobs: int = 0
    started: float = field(default_factory=time.monotonic)
    # Bytes of the blobs on their way in, read as the ticker draws.
    moving: list[Callable[[], int]] = field(default_factory=list)

    def line(self) -> str:
        moving = self.done + sum(written() for written in self.moving)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = moving / elapsed
        eta = (self.total - moving) / rate if rate > 0 and self.total > moving else 0.0
        return (
            f"{moving / 1e6:9.1f} / {self.total / 1e6:.1f} MB  {rate / 1e6:7.1f} MB/s"
            f"  ETA {eta:5.0f} s  {self.blobs} blobs"
        )

    def blob_done(self, digest: str, size: int) -> None:
        self.done += size
        self.blobs += 1
        if not self.out.isatty():
            print(f"fetched {digest} ({size} bytes)", file=self.out)

    async def ticker(self) -> None:
        if not self.out.isatty():
            return
        while True:
            print("\r" + self.line(), end="", file=self.out, flush=True)
            await asyncio.sleep(0.2)
