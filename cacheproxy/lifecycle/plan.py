"""What to delete: lifecycle rules (gc) and the size limit (eviction). Pure planning.

The plans are pure functions of a snapshot, so ``gc --dry-run`` prints exactly
what ``gc`` then does, and both are unit-testable without a disk.

gc, in the spirit of ECR lifecycle policies: a tag is kept when a ``keep`` pattern
pins it; otherwise it expires when it was not pulled for ``expire_days``, or when
``max_tags_per_repo`` more recently pulled tags of its repository are kept.
Content (manifests and blobs) goes when no kept tag reaches it and either a removed
tag reached it or it was not used for ``expire_days``.

Eviction: when the cache is over its size limit, least recently used blobs go
first, but content reachable from recently used manifests and pinned tags only
after everything else, and never a blob a client is reading.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..store.index import Snapshot, TagRecord

DAY = 86400.0


@dataclass(frozen=True)
class Rules:
    keep: tuple[str, ...] = ()
    expire_days: float | None = None
    max_tags_per_repo: int | None = None


@dataclass
class Plan:
    """Tags and content to delete, and the bytes that frees."""

    tags: list[TagRecord] = field(default_factory=list)
    content: dict[str, int] = field(default_factory=dict)  # digest -> size

    @property
    def bytes_freed(self) -> int:
        return sum(self.content.values())

    def describe(self) -> list[str]:
        lines = [
            f"tag {t.upstream}/{t.name}:{t.tag} -> {t.entry.digest}"
            f" (last pulled {int(t.last_pulled)})"
            for t in self.tags
        ]
        lines += [f"blob {digest} ({size} bytes)" for digest, size in sorted(self.content.items())]
        lines.append(
            f"{len(self.tags)} tags, {len(self.content)} blobs, {self.bytes_freed} bytes freed"
        )
        return lines


def pinned(tag: TagRecord, patterns: Iterable[str]) -> bool:
    """``keep`` patterns match ``upstream/name:tag`` or ``upstream/name`` (fnmatch)."""
    full = f"{tag.upstream}/{tag.name}:{tag.tag}"
    repo = f"{tag.upstream}/{tag.name}"
    return any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(repo, p) for p in patterns)


def reachable(roots: Iterable[str], refs: Mapping[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        digest = stack.pop()
        if digest in seen:
            continue
        seen.add(digest)
        stack.extend(refs.get(digest, ()))
    return seen


def last_used(digest: str, snapshot: Snapshot, sizes_mtime: Mapping[str, float]) -> float:
    access = snapshot.access.get(digest)
    return access[0] if access else sizes_mtime.get(digest, 0.0)


def plan_gc(
    snapshot: Snapshot,
    sizes: Mapping[str, int],
    mtimes: Mapping[str, float],
    refs: Mapping[str, list[str]],
    rules: Rules,
    now: float,
) -> Plan:
    """What a gc run deletes under ``rules`` at time ``now``."""
    expire = rules.expire_days * DAY if rules.expire_days is not None else None
    by_repo: dict[tuple[str, str], list[TagRecord]] = {}
    for tag in snapshot.tags:
        by_repo.setdefault((tag.upstream, tag.name), []).append(tag)
    kept: list[TagRecord] = []
    plan = Plan()
    for tags in by_repo.values():
        tags.sort(key=lambda t: t.last_pulled, reverse=True)
        rank = 0
        for tag in tags:
            if pinned(tag, rules.keep):
                kept.append(tag)
                continue
            too_old = expire is not None and now - tag.last_pulled > expire
            too_many = rules.max_tags_per_repo is not None and rank >= rules.max_tags_per_repo
            if too_old or too_many:
                plan.tags.append(tag)
            else:
                kept.append(tag)
                rank += 1
    live = reachable((t.entry.digest for t in kept), refs)
    dropped = reachable((t.entry.digest for t in plan.tags), refs)
    for digest, size in sizes.items():
        if digest in live:
            continue
        stale = expire is not None and now - last_used(digest, snapshot, mtimes) > expire
        if digest in dropped or stale:
            plan.content[digest] = size
    return plan


def plan_eviction(
    snapshot: Snapshot,
    sizes: Mapping[str, int],
    mtimes: Mapping[str, float],
    refs: Mapping[str, list[str]],
    in_use: Iterable[str],
    keep: tuple[str, ...],
    limit: int,
    target: int,
    hot_since: float,
    pending: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Blobs to delete to bring the cache from over ``limit`` down to ``target``."""
    used = sum(sizes.values())
    if used <= limit:
        return {}
    busy = set(in_use)
    recent_manifests = [
        d for d in snapshot.manifest_types if last_used(d, snapshot, mtimes) >= hot_since
    ]
    pinned_roots = [t.entry.digest for t in snapshot.tags if pinned(t, keep)]
    hot = reachable(recent_manifests, refs)
    protected = reachable(pinned_roots, refs)
    pending = pending or {}

    def order(digest: str) -> tuple[int, int, float]:
        when = max(last_used(digest, snapshot, mtimes), pending.get(digest, 0.0))
        return (digest in protected, digest in hot, when)

    victims: dict[str, int] = {}
    for digest in sorted((d for d in sizes if d not in busy), key=order):
        if used <= target:
            break
        victims[digest] = sizes[digest]
        used -= sizes[digest]
    return victims
