"""One process at a time may change a cache directory: ``<cache>/lock``, flock(2).

The server holds the lock exclusively for as long as it runs; a command that
removes temp files or writes blobs (gc, verify, import, prefetch) takes it too, or
refuses at once when it is held: removing "leftover" temp files would delete a
running server's fills. Commands that only read (ls, report, export, gc --dry-run)
do not take it. The kernel drops the lock when its holder exits, even on SIGKILL,
so a crashed server never leaves the cache locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .private import FILE_MODE, make_dirs


class CacheBusy(Exception):
    """Another process (a running server, or a command) holds the cache directory."""


class CacheLock:
    """The exclusive lock on one cache directory, held until :meth:`release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, cache_dir: Path, path: Path) -> CacheLock:
        """Lock ``path`` (creating ``cache_dir`` if needed) or raise CacheBusy (blocking
        I/O, but never waits for the lock)."""
        make_dirs(cache_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CacheBusy(
                f"a cacheproxy server (or another command) is using {cache_dir}: it holds"
                f" {path}; stop it first, or pull through the server"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
