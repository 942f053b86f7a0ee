"""A policy's public keys, read from their PEM files and read again when a file
changes (its size or modification time), looked at no more often than every
``RECHECK`` seconds and never on a request's own time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config.fields import ConfigError
from .cosign import PublicKey, key_id, load_key

log = logging.getLogger(__name__)

RECHECK = 5.0
# A PEM public key is well under this (RSA 4096: 800 bytes).
MAX_KEY_FILE = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Seen:
    stamp: tuple[int, int] | None
    key: PublicKey | None


class Keyring:
    """The keys of one policy's files, by id."""

    def __init__(
        self, paths: tuple[Path, ...], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._paths = paths
        self._clock = clock
        self._seen: dict[Path, _Seen] = {}
        self._checked = clock()
        #: key id -> key, as last read.
        self.keys: dict[str, PublicKey] = {}
        for path in paths:
            # At the start a key that cannot be read is a configuration error.
            stamp, key = _read(path)
            if key is None:
                raise ConfigError(f"[[policy]] keys: {path}: {stamp}")
            self._seen[path] = _Seen(_stamp(path), key)
        self._publish()

    def due(self) -> bool:
        """Whether :meth:`refresh` would look at the files now (no I/O)."""
        return self._clock() - self._checked >= RECHECK

    def refresh(self) -> bool:
        """Read again the files that changed (blocking); True when a key did. A file
        that can no longer be read, or holds no key, counts no key (fail closed)."""
        self._checked = self._clock()
        changed = False
        for path in self._paths:
            stamp = _stamp(path)
            if stamp == self._seen[path].stamp:
                continue
            problem, key = _read(path)
            if key is None:
                log.error("policy key %s is no longer used: %s", path, problem)
            self._seen[path] = _Seen(stamp, key)
            changed = True
        if changed:
            self._publish()
        return changed

    def _publish(self) -> None:
        self.keys = {key_id(s.key): s.key for s in self._seen.values() if s.key is not None}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _read(path: Path) -> tuple[str, PublicKey | None]:
    """(what went wrong, the key)."""
    try:
        with open(path, "rb") as fh:
            pem = fh.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        return f"cannot read it: {exc.strerror}", None
    if len(pem) > MAX_KEY_FILE:
        return "too large for a public key", None
    try:
        return "", load_key(pem)
    except ValueError as exc:
        return str(exc), None
