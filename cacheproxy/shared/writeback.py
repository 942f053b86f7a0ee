"""Write-back: what this node fetched from an upstream goes to the bucket, in the
background, from the verified file on disk.

Only content verified against its digest is offered (a committed fill, a kept
manifest), and only what came from an upstream (what came from a peer or the
bucket is there already, or is the owner's to write). A bounded queue holds what
waits; a full queue drops the offer (counted): a client never waits for an upload.
Each upload first asks whether the object is there (another cluster may have put
it), then sends one PUT, or a multipart upload above the threshold whose parts go
``upload_concurrency`` at a time. A multipart upload completes or is aborted, so an
object is never half-visible; one that fails is retried later, a few times, then
dropped (the next fill from the upstream offers it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from ..accounting import Accounting
from ..oci import Digest
from ..store.files import BlobStore
from .keys import digest_of_key, part_plan
from .lifecycle import sweep_uploads
from .s3 import FileSpan, S3Unavailable
from .tier import SharedTier

log = logging.getLogger(__name__)

# Tries of one upload, and the seconds before the first retry (doubling after).
ATTEMPTS = 3
RETRY_DELAY = 30.0
# Seconds an abort of a failed multipart upload may take (the start-up sweep
# catches any the bucket did not take).
ABORT_TIMEOUT = 10.0


@dataclass
class Job:
    """One object to write: a blob from the store, or a manifest's bytes."""

    digest: Digest
    upstream: str
    repo: str
    body: bytes | None = None
    content_type: str | None = None
    attempts: int = 0


class WriteBack:
    """The uploads of one node, owned here: started by :meth:`start`, stopped by close."""

    def __init__(
        self,
        tier: SharedTier,
        store: BlobStore,
        accounting: Accounting,
        retry_delay: float = RETRY_DELAY,
    ) -> None:
        self._tier = tier
        self._store = store
        self._accounting = accounting
        self._retry_delay = retry_delay
        settings = tier.settings
        self._queue: asyncio.Queue[Job] = asyncio.Queue(settings.max_pending_uploads)
        # Digests queued, uploading or waiting for a retry: one upload each at a time.
        self._pending: set[str] = set()
        self._slots = asyncio.Semaphore(settings.upload_concurrency)
        self._workers: list[asyncio.Task[object]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        """Start the upload workers, and one sweep of abandoned multipart uploads."""
        now = dt.datetime.now(dt.UTC)
        sweep = asyncio.create_task(
            sweep_uploads(self._tier, now, self._uploading), name="shared sweep"
        )
        self._workers.append(sweep)
        for i in range(self._tier.settings.upload_concurrency):
            self._workers.append(asyncio.create_task(self._work(), name=f"shared upload {i}"))

    def blob(self, digest: Digest, upstream: str, repo: str) -> bool:
        """Offer a committed blob; False when it was not queued (pending, or full)."""
        return self._offer(Job(digest, upstream, repo))

    def manifest(
        self, upstream: str, repo: str, digest: Digest, body: bytes, media_type: str
    ) -> bool:
        """Offer a verified manifest (by digest: tags are not shared)."""
        return self._offer(Job(digest, upstream, repo, body, media_type))

    def _offer(self, job: Job) -> bool:
        key = str(job.digest)
        if key in self._pending:
            return False
        # Jobs waiting for a retry are off the queue: the bound is on everything pending.
        if len(self._pending) >= self._tier.settings.max_pending_uploads:
            self._tier.stats.count_upload_dropped()
            log.warning("shared tier: too many uploads pending, not writing %s", job.digest)
            return False
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._tier.stats.count_upload_dropped()
            log.warning("shared tier: upload queue full, not writing %s", job.digest)
            return False
        self._pending.add(key)
        self._idle.clear()
        return True

    def _uploading(self, key: str) -> bool:
        digest = digest_of_key(self._tier.settings.root, key)
        return digest is not None and digest in self._pending

    @property
    def pending(self) -> int:
        """Uploads queued, running or waiting for a retry."""
        return len(self._pending)

    async def drained(self) -> None:
        """Wait until nothing is pending (tests, benchmarks, a graceful stop)."""
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            if not self._tier.up:
                # Not a try: the bucket is being left alone after a fault.
                self._later(job, self._tier.down_for() + 0.1)
                continue
            done = True
            try:
                await self._upload(job)
            except S3Unavailable as exc:
                self._tier.fault(exc.kind, f"writing {job.digest}: {exc.detail}")
                self._tier.stats.count_upload_failure()
                done = not self._retry(job)
            except OSError as exc:
                log.warning("shared tier: cannot read %s to write it: %s", job.digest, exc)
            except Exception:  # an answer no parser expected: the worker must live on
                log.exception("shared tier: writing %s failed", job.digest)
                self._tier.stats.count_upload_failure()
            finally:
                if done:
                    self._finish(job)

    def _finish(self, job: Job) -> None:
        self._pending.discard(str(job.digest))
        if not self._pending:
            self._idle.set()

    def _retry(self, job: Job) -> bool:
        """Try ``job`` again later; False when it has had its tries (dropped)."""
        job.attempts += 1
        if job.attempts >= ATTEMPTS:
            self._tier.stats.count_upload_dropped()
            log.warning("shared tier: giving up writing %s", job.digest)
            return False
        self._later(job, self._retry_delay * 2 ** (job.attempts - 1))
        return True

    def _later(self, job: Job, delay: float) -> None:
        """Queue ``job`` again in ``delay`` seconds (dropped if the queue is full then)."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def again() -> None:
            assert handle is not None
            self._timers.discard(handle)
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:
                self._tier.stats.count_upload_dropped()
                self._finish(job)

        handle = loop.call_later(delay, again)
        self._timers.add(handle)

    async def _upload(self, job: Job) -> None:
        tier = self._tier
        key = tier.key(job.digest)
        # Another proxy (another cluster) may have written it: ask, unless this node's
        # own GET of it just answered 404 (that was the question, already asked).
        if not tier.missed_lately(job.digest):
            self._accounting.shared(job.upstream, job.repo, "get", 1, 0)
            async with self._slots:
                found = await tier.s3.head(key)
            if found is not None:
                tier.stats.count_already_there()
                tier.remember(job.digest, found.size)
                return
        if job.body is not None:
            async with self._slots:
                await tier.s3.put(key, job.body, job.content_type)
            self._sent(job, 1, len(job.body))
            return
        blob = await asyncio.to_thread(self._store.open, job.digest)
        if blob is None:
            return  # evicted meanwhile: nothing to write
        try:
            if blob.size < tier.settings.multipart_threshold:
                async with self._slots:
                    await tier.s3.put(key, FileSpan(blob.fd, 0, blob.size))
                self._sent(job, 1, blob.size)
            else:
                requests = await self._multipart(key, blob.fd, blob.size)
                self._sent(job, requests, blob.size)
        finally:
            os.close(blob.fd)

    def _sent(self, job: Job, requests: int, size: int) -> None:
        self._tier.stats.count_upload(requests, size)
        self._tier.worked()
        self._tier.remember(job.digest, size)
        self._tier.checked(job.digest)
        self._accounting.shared(job.upstream, job.repo, "put", requests, size)
        log.info("shared tier: wrote %s (%d bytes)", job.digest, size)

    async def _multipart(self, key: str, fd: int, size: int) -> int:
        """Upload in parts; returns the requests it took. Completes or aborts."""
        s3 = self._tier.s3
        plan = part_plan(size, self._tier.settings.part_size)
        async with self._slots:
            upload_id = await s3.create_upload(key)
        etags: dict[int, str] = {}
        todo: Iterator[tuple[int, int, int]] = iter(plan)

        async def lane() -> None:
            for number, offset, length in todo:
                async with self._slots:
                    etags[number] = await s3.upload_part(
                        key, upload_id, number, FileSpan(fd, offset, length)
                    )

        try:
            lanes = min(len(plan), self._tier.settings.upload_concurrency)
            async with asyncio.TaskGroup() as group:
                for _ in range(lanes):
                    group.create_task(lane())
            async with self._slots:
                await s3.complete_upload(key, upload_id, sorted(etags.items()))
        except BaseException as exc:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(ABORT_TIMEOUT):
                    await s3.abort_upload(key, upload_id)
            if isinstance(exc, BaseExceptionGroup):
                # A part's failure is the upload's failure.
                first = exc.exceptions[0]
                if isinstance(first, S3Unavailable | OSError):
                    raise first from exc
            raise
        return len(plan) + 2

    async def close(self) -> None:
        """Stop uploading: what is queued or waiting is dropped."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
