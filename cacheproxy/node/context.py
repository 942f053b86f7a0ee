"""What every runtime's wiring is given, and what its checks answer.

:class:`Node` is the node as ``node check|install|uninstall`` see it: the proxy's
config, the host's root (an init container mounts the host's directories under
``/host`` and passes ``--root /host``), the mirror's URL, and where the runtime's
binary is. A :class:`Check` is one line of ``node check``: PASS or FAIL, and why.
Versions are read from the runtime's own binary (``containerd --version``), never
guessed: a check that needs one and cannot read it fails and says so.
"""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..commands.client_config import MirrorTarget, registries
from ..config import Config

# How long a runtime's `--version` may take (it prints and exits).
VERSION_TIMEOUT = 10.0
# How long the mirror's /v2/ may take to answer from this node.
MIRROR_TIMEOUT = 3.0
# A version as runtimes print it: 1.6.20, v2.1.3, 1.6.20~ds1, v1.30.4+k3s1.
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-~+].*)?,?")

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Check:
    """One preflight result: ``name`` is what ``--skip`` names."""

    name: str
    ok: bool
    why: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.why}"


@dataclass(frozen=True)
class Node:
    """The node being wired, as the command line describes it."""

    config: Config
    root: Path
    mirror: str
    binary: Path | None = None
    run: Callable[[Sequence[str]], str] = field(default=lambda argv: _run(argv))

    def host(self, path: str) -> Path:
        """A path on the host (``/etc/containerd``) under the root given."""
        return self.root / path.lstrip("/")

    def registries(self) -> list[MirrorTarget]:
        """Every registry the proxy serves by name (upstreams, then enabled presets)."""
        return registries(self.config)

    def version(self, candidates: Sequence[str], word: str = "") -> tuple[Version | None, str]:
        """The runtime's version from ``<binary> --version``: the binary given, else
        the first of ``candidates`` (host paths) present under the root. ``word``:
        the version follows it in the output (``Version:``), else the first version
        printed. Returns (version or None, where it came from or why not)."""
        if self.binary is not None:
            binary: Path | None = self.binary
        else:
            binary = next((self.host(c) for c in candidates if self.host(c).is_file()), None)
        if binary is None:
            looked = ", ".join(str(self.host(c)) for c in candidates)
            return None, f"no binary found ({looked}); name it with --binary"
        try:
            out = self.run([str(binary), "--version"])
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"{binary} --version failed: {exc}"
        found = parse_version(out, word)
        if found is None:
            first = out.strip().splitlines()[0] if out.strip() else "nothing"
            return None, f"{binary} --version printed no version ({first!r})"
        return found, f"{binary} --version"


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, timeout=VERSION_TIMEOUT, check=True, text=True
    )
    return done.stdout + done.stderr


def parse_version(text: str, word: str = "") -> Version | None:
    """The first version in ``text`` (after ``word`` when given)."""
    if word:
        _, found, text = text.partition(word)
        if not found:
            return None
    for token in text.split():
        m = _VERSION.fullmatch(token)
        if m:
            return int(m[1]), int(m[2]), int(m[3] or 0)
    return None


def show(version: Version) -> str:
    return ".".join(map(str, version))


def mirror_check(mirror: str, timeout: float = MIRROR_TIMEOUT) -> Check:
    """The mirror answers ``/v2/`` from this node: 200, or 401 (it wants a login)."""
    url = mirror.rstrip("/") + "/v2/"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, urllib.error.URLError) as exc:
        return Check("mirror", False, f"{url} does not answer from this node: {exc}")
    if status in (200, 401):
        return Check("mirror", True, f"{url} answers {status}")
    return Check("mirror", False, f"{url} answers {status}, not 200 or 401")


class Wiring(Protocol):
    """One runtime's (or snapshotter's) files: what it reads, what install writes."""

    #: The name --runtime or --with gives it.
    name: str

    def checks(self, node: Node) -> list[Check]:
        """The preflight: will the runtime read what install writes?"""

    def directories(self, node: Node) -> list[Path]:
        """The directories install writes in (each keeps its own backup)."""

    def files(
        self, node: Node, directory: Path, original: Callable[[str], bytes | None]
    ) -> dict[str, bytes]:
        """Relative path -> contents for ``directory``; ``original(rel)`` is what
        to merge into (the file as the runtime's owner left it, or None)."""

    def notes(self, node: Node) -> list[str]:
        """What the operator must do after install (a restart, say)."""
