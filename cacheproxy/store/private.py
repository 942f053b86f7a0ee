"""Files and directories only the proxy's own user may open.

The cache holds layers of private images: another local user must not read
them, nor the index (names and tags) or the ledger. Everything the proxy creates
under the cache directory is 0600 (directories 0700), set at creation, so the
umask cannot widen it. Existing files are never changed behind the operator's
back; only the cache root itself is closed at start, which alone keeps everything
below it out of other users' reach.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 (blocking)."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=DIR_MODE)


def touch(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists (blocking).

    For databases created by a library (SQLite, diskcache): they open the file as
    it is, and SQLite gives its -wal and -shm files the database file's mode.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    os.close(fd)


def close_root(root: Path) -> None:
    """Make the cache root 0700 if it is open to others (blocking; at start only)."""
    mode = stat.S_IMODE(root.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(root, DIR_MODE)
    except OSError as exc:
        log.warning("cache directory %s is mode %o and cannot be closed: %s", root, mode, exc)
        return
    log.warning("cache directory %s was mode %o: set to 700 (it holds private layers)", root, mode)
