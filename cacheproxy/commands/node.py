"""``cacheproxy node check|install|uninstall``: the node's runtime and the proxy.

``check`` prints one PASS or FAIL line per check and exits 1 on any FAIL; ``install``
merges the mirror into the runtime's files (``--dry-run``: prints the diff);
``uninstall`` restores what install replaced and removes what it added. Every
runtime path is taken under ``--root`` (an init container's mount of the host).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import Config, ConfigError
from ..node import RUNTIMES, SNAPSHOTTERS, Node, Wiring
from ..node.context import mirror_check
from ..node.files import Installed, NodeError
from .client_config import mirror_url

ACTIONS = ("check", "install", "uninstall")


def wirings(runtime: str, with_: Sequence[str]) -> list[Wiring]:
    """The runtime's wiring, then each snapshotter's ``--with`` names."""
    unknown = [w for w in with_ if w not in SNAPSHOTTERS]
    if unknown:
        raise ConfigError(
            f"--with: unknown {', '.join(unknown)} (known: {', '.join(SNAPSHOTTERS)})"
        )
    return [RUNTIMES[runtime], *(SNAPSHOTTERS[w] for w in dict.fromkeys(with_))]


def run(
    config: Config,
    action: str,
    runtime: str,
    root: Path,
    mirror: str | None = None,
    *,
    dry_run: bool = False,
    with_: Sequence[str] = (),
    binary: Path | None = None,
    skip: Sequence[str] = (),
) -> int:
    """Run one action; the exit status (1: a check failed or a file is unusable)."""
    try:
        parts = wirings(runtime, with_)
        url = mirror_url(config, mirror) if action != "uninstall" else ""
    except ConfigError as exc:
        print(f"cacheproxy node: {exc}", file=sys.stderr)
        return 2
    node = Node(config, root, url, binary)
    try:
        if action == "check":
            return check(node, parts, set(skip))
        if action == "install":
            return install(node, parts, dry_run)
        return uninstall(node, parts)
    except (NodeError, OSError) as exc:
        print(f"cacheproxy node {action}: {exc}", file=sys.stderr)
        return 1


def check(node: Node, parts: Sequence[Wiring], skip: set[str]) -> int:
    """Print every check's line (but those skipped); 1 if any failed."""
    results = [c for part in parts for c in part.checks(node)]
    results.append(mirror_check(node.mirror))
    failed = 0
    for result in results:
        if result.name in skip:
            continue
        print(result.line())
        failed += not result.ok
    return 1 if failed else 0


def install(node: Node, parts: Sequence[Wiring], dry_run: bool) -> int:
    """Merge and write every part's files (or print the diff), then what to do next."""
    # Every file is built before any is written: a file that cannot be merged
    # stops the install with nothing changed.
    plans = []
    for part in parts:
        for directory in part.directories(node):
            state = Installed(directory, part.name)
            plans.append((part, state, part.files(node, directory, state.original)))
    for _part, state, files in plans:
        if dry_run:
            sys.stdout.write(state.diff(files) or f"# {state.directory}: nothing to change\n")
            continue
        for line in state.apply(files):
            print(line)
    if not dry_run:
        for part in parts:
            for note in part.notes(node):
                print(f"note: {note}")
    return 0


def uninstall(node: Node, parts: Sequence[Wiring]) -> int:
    """Undo what install wrote in every part's directories."""
    for part in parts:
        for directory in part.directories(node):
            said = Installed(directory, part.name).remove()
            for line in said or [f"{directory}: nothing installed"]:
                print(line)
    return 0
