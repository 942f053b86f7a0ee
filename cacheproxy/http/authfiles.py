"""The client credential files: an htpasswd file and a tokens file, parsed.

Both are line files an operator edits by hand: blank lines and lines starting
with ``#`` are comments, never entries (a comment line must not become a token
``#`` or a user ``#old``). Parsing is pure; :class:`WatchedFile` re-reads a file
when it changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# bcrypt's prefixes; distribution's htpasswd auth accepts only bcrypt too.
BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")


def entries(lines: Iterable[str]) -> Iterator[str]:
    """The lines that carry an entry: stripped, neither blank nor a ``#`` comment."""
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def parse_tokens(lines: Iterable[str]) -> tuple[tuple[bytes, str], ...]:
    """``<token> [<client name>]`` lines as (token, name); the name defaults to "token"."""
    out = []
    for line in entries(lines):
        token, _, name = line.partition(" ")
        out.append((token.encode(), name.strip() or "token"))
    return tuple(out)


def parse_htpasswd(lines: Iterable[str]) -> dict[str, bytes]:
    """``user:bcrypt-hash`` lines as {user: hash}; the first entry of a user wins.

    Entries without a user name or with another kind of hash are skipped (and
    logged, without the hash): they could never log in.
    """
    users: dict[str, bytes] = {}
    for number, line in enumerate(entries(lines), 1):
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith(BCRYPT_PREFIXES):
            log.warning("htpasswd entry %d is not user:bcrypt-hash; ignored", number)
            continue
        users.setdefault(user, hashed.encode())
    return users


# A watched file's mtime is looked at no more often than this.
RECHECK = 5.0


class WatchedFile:
    """A small file re-read when its mtime changes (checked at most every RECHECK s)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._mtime: float | None = None
        self._checked = 0.0
        self.lines: list[str] = []

    def due(self) -> bool:
        """Whether :meth:`refresh` would look at the file now (cheap, no I/O)."""
        return self._mtime is None or self._clock() - self._checked >= RECHECK

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when it did (blocking)."""
        if not self.due():
            return False
        now = self._clock()
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return False
            self.lines = self.path.read_text().splitlines()
        except OSError as exc:
            log.error("cannot read %s: %s", self.path, exc.strerror)
            return False
        self._mtime = mtime
        return True
