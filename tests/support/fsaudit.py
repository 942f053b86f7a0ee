"""Record every file-system path this process opens, creates, renames or removes.

Python raises an audit event (PEP 578) for ``open``/``os.open`` and for the ``os``
and ``shutil`` calls that change the file system, in every thread. :class:`FileAudit`
installs one hook for the process (hooks cannot be removed) and records the paths
only while a ``with FileAudit() as audit:`` block is active, so a test can prove the
in-process proxy touched nothing outside its cache directory. ``os.stat`` raises no
event: existence checks are not seen, reads and writes are.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

#: Audit events whose arguments name paths, and which arguments those are.
_PATH_ARGS: dict[str, tuple[int, ...]] = {
    "open": (0,),
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.listdir": (0,),
    "os.scandir": (0,),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.link": (0, 1),
    "os.symlink": (0, 1),
    "shutil.rmtree": (0,),
    "shutil.copyfile": (0, 1),
    "shutil.move": (0, 1),
    "sqlite3.connect": (0,),
}

_lock = threading.Lock()
_active: list[FileAudit] = []
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _active or event not in _PATH_ARGS:
        return
    for i in _PATH_ARGS[event]:
        if i >= len(args):
            continue
        raw = args[i]
        if isinstance(raw, int) or raw is None:
            continue  # a file descriptor: its path was recorded when it was opened
        try:
            path = os.fsdecode(raw)
        except TypeError:
            continue
        with _lock:
            for audit in _active:
                audit.events.append((event, path))


class FileAudit:
    """The (event, path) pairs seen while active; paths as the caller passed them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __enter__(self) -> FileAudit:
        global _installed
        with _lock:
            if not _installed:
                sys.addaudithook(_hook)
                _installed = True
            _active.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _lock:
            _active.remove(self)

    def escaping(self, root: Path, watched: Path) -> list[tuple[str, str]]:
        """Events on a path under *watched* (or naming *root* textually) that does
        not stay inside *root* once ``..`` and relative parts are resolved."""
        root_s = os.path.abspath(root)
        watched_s = os.path.abspath(watched)
        bad = []
        for event, path in self.events:
            resolved = os.path.abspath(path)
            under = resolved == watched_s or resolved.startswith(watched_s + os.sep)
            mentions = path.startswith(root_s) or under
            inside = resolved == root_s or resolved.startswith(root_s + os.sep)
            if mentions and not inside:
                bad.append((event, path))
        return bad


def snapshot(top: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under *top* except *skip*: (size, mtime_ns) by path."""
    out: dict[str, tuple[int, int]] = {}
    skip_s = os.path.abspath(skip)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip_s]
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            out[os.path.relpath(full, top)] = (st.st_size, st.st_mtime_ns)
    return out
