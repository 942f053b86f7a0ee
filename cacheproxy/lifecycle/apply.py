"""Applying lifecycle plans to the disk and the index, and keeping them in step.

Everything here blocks (file system, SQLite): the server runs it in a thread, the
command-line tools call it directly. Deletion order keeps every state a crash can
leave consistent: tag records go first, then the files, so a tag never names
content that is gone, and a file removed without its index record is harmless.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..errors import DigestInvalid
from ..oci import parse_digest, references
from ..store.files import BlobStore
from ..store.index import Index, Snapshot
from .plan import Plan, Rules, plan_gc

log = logging.getLogger(__name__)


@dataclass
class CacheState:
    """The cache as the planners need it."""

    snapshot: Snapshot
    sizes: dict[str, int]
    mtimes: dict[str, float]
    refs: dict[str, list[str]]


def read_state(store: BlobStore, index: Index) -> CacheState:
    snapshot = index.snapshot()
    sizes, mtimes = store.scan()
    refs: dict[str, list[str]] = {}
    for digest in snapshot.manifest_types:
        if digest not in sizes:
            continue
        body = store.read(parse_digest(digest))
        if body is not None:
            refs[digest] = references(body)
    return CacheState(snapshot, sizes, mtimes, refs)


def delete(store: BlobStore, index: Index, plan: Plan) -> None:
    for tag in plan.tags:
        index.forget_tag(tag.upstream, tag.name, tag.tag)
    for digest in plan.content:
        store.delete(parse_digest(digest))
        index.forget_content(digest)


def gc(
    store: BlobStore, index: Index, rules: Rules, dry_run: bool, now: float | None = None
) -> Plan:
    """Plan (and unless ``dry_run``, apply) one lifecycle run."""
    state = read_state(store, index)
    plan = plan_gc(state.snapshot, state.sizes, state.mtimes, state.refs, rules, now or time.time())
    if not dry_run:
        delete(store, index, plan)
        log.info(
            "gc removed %d tags and %d blobs, %d bytes",
            len(plan.tags),
            len(plan.content),
            plan.bytes_freed,
        )
    return plan


def reconcile(store: BlobStore, index: Index) -> int:
    """Drop index records of content whose file is gone (after a crash or by hand).

    Tag records stay: a tag whose manifest file is gone is fetched again (or, with
    no upstream, answered MANIFEST_UNKNOWN), never served wrong.
    """
    sizes, _ = store.scan()
    snapshot = index.snapshot()
    gone = [d for d in (*snapshot.manifest_types, *snapshot.access) if d not in sizes]
    for digest in set(gone):
        index.forget_content(digest)
    # Links of content never held (a manifest's other platforms, say) would pile up.
    index.forget_links_except(set(sizes))
    if gone:
        log.info("index reconciled with the disk: %d records of missing content dropped", len(gone))
    return len(set(gone))


def verify(store: BlobStore, index: Index) -> tuple[int, list[str]]:
    """Hash every blob; remove any that does not match its name. (count, removed)."""
    sizes, _ = store.scan()
    removed = []
    for key in sorted(sizes):
        try:
            digest = parse_digest(key)
        except DigestInvalid:  # a stray file no digest names: never served
            log.warning("stray file in the blob store: %s", key)
            continue
        hasher = digest.hasher()
        with open(store.path(digest), "rb") as fh:
            while chunk := fh.read(1 << 20):
                hasher.update(chunk)
        if hasher.hexdigest() != digest.hex:
            log.error("blob %s does not match its digest; removed", key)
            store.delete(digest)
            index.forget_content(key)
            removed.append(key)
    return len(sizes), removed
