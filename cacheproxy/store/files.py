"""Content-addressed blob files: ``blobs/<alg>/<ab>/<hex>``, written atomically.

A file under ``blobs/`` is only ever created by renaming a temp file whose size and
digest were verified and whose data was fsynced, so a file that exists is a
verified, complete blob. A crash leaves at worst a temp file, removed at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import CacheWriteFailed
from ..layout import CacheLayout
from ..oci import Digest
from ..sizes import DiskSpace
from .private import FILE_MODE, close_root, make_dirs

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OpenBlob:
    """A complete blob opened for reading; the caller owns ``fd``."""

    fd: int
    size: int


class BlobStore:
    """Blob files under one cache directory."""

    def __init__(self, layout: CacheLayout) -> None:
        self.layout = layout
        self.root = layout.root
        self.blobs_dir = layout.blobs
        self.tmp_dir = layout.tmp

    def prepare(self, clean: bool = True) -> int:
        """Create the layout (private: see store.private), close the cache root, and
        with ``clean`` remove temp files left by a crash. Returns how many.

        Only the holder of the cache lock (store.lock) may clean: anyone else's
        "leftovers" could be a running server's fills.
        """
        make_dirs(self.blobs_dir)
        make_dirs(self.tmp_dir)
        close_root(self.root)
        removed = 0
        if not clean:
            return removed
        for leftover in self.tmp_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        if removed:
            log.info("removed %d unfinished temp files from %s", removed, self.tmp_dir)
        return removed

    def path(self, digest: Digest) -> Path:
        return self.layout.blob(digest)

    def open(self, digest: Digest) -> OpenBlob | None:
        """Open a complete blob, or None when it is not cached. Cheap: one open + fstat."""
        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return OpenBlob(fd, os.fstat(fd).st_size)

    def exists(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def new_temp(self, digest: Digest) -> tuple[Path, int]:
        """Create a fresh temp file for a fill; returns its path and a read-write fd
        (a fill hashes back what landed out of order)."""
        path = self.tmp_dir / f"{digest.algorithm}-{digest.hex}.{secrets.token_hex(6)}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            # No inode left, no descriptor free: this proxy's own shortage, answered
            # as a write to a full disk is (503), never a traceback.
            raise CacheWriteFailed(f"creating the blob's file failed: {exc.strerror}") from exc
        return path, fd

    def commit(self, tmp_path: Path, fd: int, digest: Digest) -> Path:
        """Make a verified temp file durable and move it into place (blocking)."""
        final = self.path(digest)
        try:
            os.fsync(fd)
            make_dirs(final.parent)
            os.replace(tmp_path, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise CacheWriteFailed(f"storing the blob failed: {exc.strerror}") from exc
        return final

    def put(self, digest: Digest, data: bytes) -> Path:
        """Store small verified content (manifests) atomically (blocking)."""
        tmp_path, fd = self.new_temp(digest)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            return self.commit(tmp_path, fd, digest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
            raise
        finally:
            os.close(fd)

    def read(self, digest: Digest) -> bytes | None:
        """Read a whole small blob (manifests), or None (blocking)."""
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, digest: Digest) -> bool:
        """Remove a complete blob (blocking). Readers holding it open keep their bytes."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def scan(self) -> tuple[dict[str, int], dict[str, float]]:
        """Every complete blob's size and mtime, by digest string (blocking)."""
        sizes: dict[str, int] = {}
        mtimes: dict[str, float] = {}
        if not self.blobs_dir.is_dir():
            return sizes, mtimes
        for algo in os.scandir(self.blobs_dir):
            if not algo.is_dir():
                continue
            for prefix in os.scandir(algo.path):
                if not prefix.is_dir():
                    continue
                for entry in os.scandir(prefix.path):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    key = f"{algo.name}:{entry.name}"
                    sizes[key] = st.st_size
                    mtimes[key] = st.st_mtime
        return sizes, mtimes

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def total_bytes(self) -> int:
        return shutil.disk_usage(self.root).total

    def disk_space(self) -> DiskSpace:
        """Free and total bytes of the cache's file system, from one ``statvfs``."""
        usage = shutil.disk_usage(self.root)
        return DiskSpace(usage.free, usage.total)

    def writable(self) -> bool:
        """Whether a temp file can be created and removed (blocking)."""
        try:
            probe = self.tmp_dir / f".probe-{secrets.token_hex(4)}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            probe.unlink()
        except OSError:
            return False
        return True

    def discard(self, tmp_path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
