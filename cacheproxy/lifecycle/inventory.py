"""``cacheproxy ls``: what the cache holds, like ECR's describe-images."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import asdict, dataclass, field

from ..store.files import BlobStore
from ..store.index import Index
from .apply import read_state
from .plan import reachable


@dataclass
class ImageRow:
    upstream: str
    repository: str
    tag: str
    digest: str
    media_type: str
    size: int  # bytes of every cached blob the tag reaches
    complete: bool  # every blob the tag reaches is cached
    last_pull: float
    pulls: int
    #: What travels with it: the tags of its referrers (the tag schema's
    #: ``sha256-<hex>``, cosign's ``.sig``, ``.att``, ``.sbom``) cached beside it.
    referrers: list[str] = field(default_factory=list)


# A tag that keeps what refers to a manifest, and the manifest's digest in it.
_REFERRER_TAG = re.compile(r"(sha256|sha512)-([0-9a-f]{64,128})(\.sig|\.att|\.sbom)?")


def inventory(store: BlobStore, index: Index) -> list[ImageRow]:
    """Every cached tag with its digest, size, last pull and pull count (blocking);
    the tags of an image's referrers are listed under it, not beside it."""
    state = read_state(store, index)
    rows = []
    for tag in state.snapshot.tags:
        reached = reachable([tag.entry.digest], state.refs)
        rows.append(
            ImageRow(
                upstream=tag.upstream,
                repository=tag.name,
                tag=tag.tag,
                digest=tag.entry.digest,
                media_type=tag.entry.media_type,
                size=sum(state.sizes.get(d, 0) for d in reached),
                complete=all(d in state.sizes for d in reached) and tag.entry.digest in state.refs,
                last_pull=tag.last_pulled,
                pulls=tag.pulls,
            )
        )
    rows.sort(key=lambda r: (r.upstream, r.repository, r.tag))
    return _under_subjects(rows)


def _under_subjects(rows: list[ImageRow]) -> list[ImageRow]:
    """Referrer tags moved under the row of the image they refer to (same upstream
    and repository); one whose image is not a cached tag stays a row of its own."""
    subjects = {(r.upstream, r.repository, r.digest): r for r in rows}
    kept = []
    for row in rows:
        named = _REFERRER_TAG.fullmatch(row.tag)
        subject = f"{named[1]}:{named[2]}" if named else None
        owner = subjects.get((row.upstream, row.repository, subject or ""))
        if owner is not None and owner is not row:
            owner.referrers.append(row.tag)
        else:
            kept.append(row)
    return kept


def render(rows: list[ImageRow], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(r) for r in rows], indent=2)
    header = f"{'REPOSITORY':50} {'TAG':20} {'DIGEST':19} {'SIZE':>10} {'LAST PULL':20} PULLS"
    lines = [header]
    for r in rows:
        when = datetime.datetime.fromtimestamp(r.last_pull, datetime.UTC).strftime("%Y-%m-%d %H:%M")
        size = f"{r.size / 1e6:.1f}MB" + ("" if r.complete else "*")
        lines.append(
            f"{r.upstream + '/' + r.repository:50} {r.tag:20} {r.digest[:19]:19} {size:>10}"
            f" {when:20} {r.pulls}"
        )
        lines.extend(f"  referrers: {tag}" for tag in r.referrers)
    if any(not r.complete for r in rows):
        lines.append("* not every blob of this image is cached")
    return "\n".join(lines)
