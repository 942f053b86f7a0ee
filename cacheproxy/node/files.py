"""The file operations of ``node install`` and ``node uninstall``, runtime-blind.

A runtime's configuration directory (``/etc/containerd/certs.d``, ``/etc/docker``,
...) gets, in ``.cacheproxy/`` inside it:

- ``backup/<path>``: each file install replaced, as it was, written once: a second
  install (a restarted pod) never overwrites it;
- ``installed.json``: the manifest: every file install wrote, whether it replaced
  one, the SHA-256 of what it wrote, and the directories it created.

Every write is atomic (a temporary file in the same directory, fsync, rename, fsync
of the directory): a runtime reading the directory meanwhile sees the old file or the
new one, and a crash leaves one or the other. The manifest names a file before the
file is written, so an interrupted install is undone like a finished one.
``uninstall`` restores each backup byte for byte (mode and modification time too),
removes what install created, and leaves alone a file changed since install wrote
it (saying so, and keeping its backup).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

STATE_DIR = ".cacheproxy"
MANIFEST = "installed.json"
BACKUP = "backup"
NEW_FILE_MODE = 0o644
# The largest file install reads or backs up: runtime configuration files are a few
# KiB; anything bigger is not one, and is not read into memory.
MAX_FILE_BYTES = 4 * 1024 * 1024


class NodeError(Exception):
    """A node file that cannot be used as it is; the message says which and why."""


@dataclass
class Entry:
    """One file install wrote."""

    existed: bool
    sha256: str = ""


@dataclass
class Manifest:
    """What install wrote under one directory."""

    runtime: str
    files: dict[str, Entry] = field(default_factory=dict)
    # Directories install created, relative ("" is the directory itself).
    dirs: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "version": 1,
            "runtime": self.runtime,
            "files": {k: vars(v) for k, v in sorted(self.files.items())},
            "dirs": self.dirs,
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> Manifest:
        try:
            doc = json.loads(data)
            files = {
                str(k): Entry(bool(v["existed"]), str(v["sha256"])) for k, v in doc["files"].items()
            }
            return cls(str(doc["runtime"]), files, [str(d) for d in doc["dirs"]])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise NodeError(f"{where}: not a manifest cacheproxy wrote ({exc})") from exc


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe_rel(rel: str) -> PurePosixPath:
    # Paths come from registry names in the config: never outside the directory.
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] == STATE_DIR:
        raise NodeError(f"refusing to write {rel!r}: not a plain relative path")
    return path


def read_file(path: Path) -> bytes | None:
    """A file's bytes, or None when there is none; NodeError for a directory or one
    too big to be a configuration file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError as exc:
        raise NodeError(f"{path} is a directory") from exc
    if len(data) > MAX_FILE_BYTES:
        raise NodeError(f"{path} is over {MAX_FILE_BYTES} bytes: not a configuration file")
    return data


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = NEW_FILE_MODE) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class Installed:
    """The install state of one directory: its manifest and backups."""

    def __init__(self, directory: Path, runtime: str) -> None:
        self.directory = directory
        self.state = directory / STATE_DIR
        self._manifest_path = self.state / MANIFEST
        data = read_file(self._manifest_path)
        self.fresh = data is None
        self.manifest = (
            Manifest(runtime) if data is None else Manifest.from_json(data, self._manifest_path)
        )

    def backup_path(self, rel: str) -> Path:
        return self.state / BACKUP / _safe_rel(rel)

    def original(self, rel: str) -> bytes | None:
        """What to merge the mirror into: the file as it is, unless it is still what
        install wrote; then what was there before (its backup, or nothing)."""
        current = read_file(self.directory / _safe_rel(rel))
        entry = self.manifest.files.get(rel)
        if entry is None or current is None or sha256(current) != entry.sha256:
            return current
        return read_file(self.backup_path(rel)) if entry.existed else None

    def _save(self) -> None:
        write_atomic(self._manifest_path, self.manifest.to_json(), 0o600)

    def _mkdirs(self, rel_dir: PurePosixPath) -> None:
        """Create ``rel_dir`` and its missing parents, each recorded as install's."""
        missing = []
        for part in [*reversed(rel_dir.parents), rel_dir]:
            rel = "" if str(part) == "." else str(part)
            if not (self.directory / rel).is_dir():
                missing.append(rel)
        for rel in missing:
            if rel not in self.manifest.dirs:
                self.manifest.dirs.append(rel)
        if missing:
            self._save()
        for rel in missing:
            (self.directory / rel).mkdir(mode=0o755, exist_ok=True)

    def apply(self, files: dict[str, bytes]) -> list[str]:
        """Write ``files`` (relative path -> bytes); what install wrote before and no
        longer writes is undone. Returns one line per file changed."""
        if not self.directory.is_dir():
            if not self.directory.parent.is_dir():
                raise NodeError(
                    f"{self.directory.parent} does not exist: is the runtime installed?"
                )
            self.manifest.dirs.append("")
            self.directory.mkdir(mode=0o755)
        self.state.mkdir(mode=0o700, exist_ok=True)
        (self.state / BACKUP).mkdir(mode=0o700, exist_ok=True)
        said = []
        for rel, data in files.items():
            said += self._write(rel, data)
        for rel in [r for r in self.manifest.files if r not in files]:
            said += self._undo(rel)
        self._prune()
        self._save()
        return said

    def _prune(self) -> None:
        """Remove the directories install created that are empty now, deepest first."""
        for rel in sorted(self.manifest.dirs, key=lambda d: -len(PurePosixPath(d).parts)):
            if rel == "":
                continue
            try:
                (self.directory / rel).rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue  # not empty: something else is in it
            self.manifest.dirs.remove(rel)

    def _write(self, rel: str, data: bytes) -> list[str]:
        path = self.directory / _safe_rel(rel)
        self._mkdirs(PurePosixPath(rel).parent)
        current = read_file(path)
        entry = self.manifest.files.get(rel)
        if entry is None:
            entry = Entry(existed=current is not None)
            if current is not None:
                self._back_up(path, rel)
        entry.sha256 = sha256(data)
        self.manifest.files[rel] = entry
        # Named before it is written: an interrupted install is undone all the same.
        self._save()
        if current == data:
            return []
        mode = path.stat().st_mode & 0o7777 if current is not None else NEW_FILE_MODE
        write_atomic(path, data, mode)
        return [f"{'merged' if entry.existed else 'wrote'} {path}"]

    def _back_up(self, path: Path, rel: str) -> None:
        backup = self.backup_path(rel)
        backup.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
        data = read_file(path)
        assert data is not None
        write_atomic(backup, data, st.st_mode & 0o7777)
        os.utime(backup, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _undo(self, rel: str) -> list[str]:
        """Restore or remove one file install wrote; keep it if changed since."""
        entry = self.manifest.files[rel]
        path = self.directory / _safe_rel(rel)
        current = read_file(path)
        if current is not None and sha256(current) != entry.sha256:
            return [
                f"kept {path}: changed since install wrote it"
                f" (its original: {self.backup_path(rel)})"
            ]
        if entry.existed:
            backup = self.backup_path(rel)
            data = read_file(backup)
            if data is None:
                return [f"kept {path}: its backup {backup} is gone"]
            st = backup.stat()
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, st.st_mode & 0o7777)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            backup.unlink()
            said = [f"restored {path}"]
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            said = [f"removed {path}"]
        del self.manifest.files[rel]
        return said

    def remove(self) -> list[str]:
        """Undo everything install wrote; the state directory goes when nothing is
        left in it."""
        if self.fresh:
            return []
        said = []
        for rel in list(self.manifest.files):
            said += self._undo(rel)
        self._prune()
        self._save()
        if self.manifest.files:
            return [*said, f"kept {self.state}: files changed since install are in it"]
        shutil.rmtree(self.state)
        if "" in self.manifest.dirs:
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        else:
            fsync_dir(self.directory)
        return said

    def diff(self, files: dict[str, bytes]) -> str:
        """What :meth:`apply` would change, as a unified diff."""
        out: list[str] = []
        wanted = dict(files)
        for rel in self.manifest.files:
            if rel not in wanted:
                entry = self.manifest.files[rel]
                wanted[rel] = (read_file(self.backup_path(rel)) or b"") if entry.existed else b""
        for rel, data in wanted.items():
            path = self.directory / rel
            current = read_file(path) or b""
            if current == data:
                continue
            out += difflib.unified_diff(
                current.decode(errors="replace").splitlines(keepends=True),
                data.decode(errors="replace").splitlines(keepends=True),
                fromfile=f"{path} (now)",
                tofile=f"{path} (after install)",
            )
        return "".join(out)
