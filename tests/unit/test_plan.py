"""The gc and eviction planners: pure functions of a snapshot of the cache."""

from __future__ import annotations

import json

from cacheproxy.lifecycle.plan import DAY, Rules, plan_eviction, plan_gc
from cacheproxy.oci import references
from cacheproxy.store.index import Snapshot, TagEntry, TagRecord

NOW = 1_700_000_000.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def tag(
    name: str, tag: str, digest: str, days_ago: float, upstream: str = "docker.io"
) -> TagRecord:
    """A tag last pulled ``days_ago`` days before NOW."""
    entry = TagEntry(digest, OCI_MANIFEST, 500, NOW - days_ago * DAY)
    return TagRecord(upstream, name, tag, entry, NOW - days_ago * DAY, 1)


def snapshot(tags: list[TagRecord], used_days_ago: dict[str, float] | None = None) -> Snapshot:
    """Every tag's manifest is a known manifest; ``used_days_ago``: access records."""
    access = {d: (NOW - days * DAY, 1) for d, days in (used_days_ago or {}).items()}
    return Snapshot(tags, {t.entry.digest: OCI_MANIFEST for t in tags}, access)


# A repository with three images: each a manifest, a config and a layer; the
# base layer is shared by all three.
REFS = {
    "m1": ["c1", "l1", "base"],
    "m2": ["c2", "l2", "base"],
    "m3": ["c3", "l3", "base"],
}
SIZES = {d: 100 for d in ["m1", "m2", "m3", "c1", "c2", "c3", "l1", "l2", "l3", "base"]}
# Every file was written long ago: only access records make content recent.
OLD = {d: NOW - 365 * DAY for d in SIZES}


def gc(tags: list[TagRecord], rules: Rules, used: dict[str, float] | None = None) -> set[str]:
    plan = plan_gc(snapshot(tags, used), SIZES, OLD, REFS, rules, NOW)
    return {f"{t.name}:{t.tag}" for t in plan.tags} | set(plan.content)


# --- gc -------------------------------------------------------------------------------


def test_gc_without_rules_deletes_nothing() -> None:
    tags = [tag("app", "v1", "m1", 400), tag("app", "v2", "m2", 1)]
    assert gc(tags, Rules()) == set()


def test_gc_expires_tags_not_pulled_for_expire_days_and_what_only_they_reach() -> None:
    tags = [tag("app", "v1", "m1", 40), tag("app", "v2", "m2", 5)]
    used = {d: 5 for d in ["m2", "c2", "l2", "base", "m3", "c3", "l3"]}
    # v1 and its own content go; the shared base layer stays with v2; m3 was used lately.
    assert gc(tags, Rules(expire_days=30), used) == {"app:v1", "m1", "c1", "l1"}


def test_gc_expires_content_no_tag_reaches_once_unused_for_expire_days() -> None:
    tags = [tag("app", "v2", "m2", 1)]
    used = {d: 1 for d in ["m2", "c2", "l2", "base"]} | {d: 29 for d in ["m3", "c3", "l3"]}
    # m1 and its blobs: no tag, and no use since their files were written long ago.
    assert gc(tags, Rules(expire_days=30), used) == {"m1", "c1", "l1"}
    assert gc(tags, Rules(), used) == set()


def test_gc_pinned_tags_are_kept_whatever_their_age_and_with_their_content() -> None:
    tags = [tag("app", "v1", "m1", 400), tag("tools", "v3", "m3", 400, upstream="ghcr.io")]
    rules = Rules(keep=("docker.io/app:v1", "ghcr.io/tools"), expire_days=30)
    assert gc(tags, rules) == {"m2", "c2", "l2"}


def test_gc_keeps_the_most_recently_pulled_tags_of_each_repository() -> None:
    tags = [
        tag("app", "v1", "m1", 3),
        tag("app", "v2", "m2", 1),
        tag("app", "v3", "m3", 2),
        # Another repository counts on its own.
        tag("other", "v1", "m1", 9),
    ]
    # Only the tag: m1 is still reached by other:v1, so none of its content goes.
    assert gc(tags, Rules(max_tags_per_repo=2)) == {"app:v1"}


def test_gc_pinned_tags_do_not_use_up_the_per_repository_allowance() -> None:
    tags = [
        tag("app", "stable", "m1", 1),
        tag("app", "v2", "m2", 2),
        tag("app", "v3", "m3", 3),
    ]
    rules = Rules(keep=("docker.io/app:stable",), max_tags_per_repo=1)
    assert gc(tags, rules) == {"app:v3", "m3", "c3", "l3"}


def test_gc_plan_says_what_it_frees() -> None:
    tags = [tag("app", "v1", "m1", 40)]
    plan = plan_gc(snapshot(tags), {"m1": 10, "c1": 20}, OLD, REFS, Rules(expire_days=30), NOW)
    assert plan.bytes_freed == 30
    lines = plan.describe()
    assert lines[0].startswith("tag docker.io/app:v1 -> m1")
    assert lines[-1] == "1 tags, 2 blobs, 30 bytes freed"


def test_references_are_what_the_registry_checked() -> None:
    """config, layers and an index's manifests; never a subject, a blobs list or a
    foreign layer (the registry accepts those unchecked)."""
    image = {
        "config": {"digest": "sha256:c"},
        "layers": [
            {"digest": "sha256:l1"},
            {"digest": "sha256:l2"},
            {"no": "digest"},
            {"digest": "sha256:foreign", "urls": ["https://example.com/layer"]},
        ],
        "subject": {"digest": "sha256:s"},
        "blobs": [{"digest": "sha256:b"}],
        "annotations": {"x": "sha256:a"},
    }
    index = {
        "manifests": [{"digest": "sha256:a"}, {"digest": "sha256:b"}],
        "subject": {"digest": "sha256:s"},
    }
    assert references(json.dumps(image).encode()) == ["sha256:c", "sha256:l1", "sha256:l2"]
    assert references(json.dumps(index).encode()) == ["sha256:a", "sha256:b"]
    assert references(b"not json") == []
    assert references(b"[1, 2]") == []
    assert references(b"\xff\xfe") == []


# --- eviction -------------------------------------------------------------------------


def evict(
    used_days_ago: dict[str, float],
    limit: int,
    target: int,
    tags: list[TagRecord] | None = None,
    in_use: tuple[str, ...] = (),
    keep: tuple[str, ...] = (),
    hot_days: float = 1,
    sizes: dict[str, int] | None = None,
) -> dict[str, int]:
    snap = snapshot(tags or [], used_days_ago)
    return plan_eviction(
        snap,
        sizes or SIZES,
        OLD,
        REFS,
        in_use=in_use,
        keep=keep,
        limit=limit,
        target=target,
        hot_since=NOW - hot_days * DAY,
    )


def test_eviction_under_the_limit_plans_nothing() -> None:
    assert evict({}, limit=1000, target=900) == {}


def test_eviction_takes_least_recently_used_first_down_to_the_low_water_target() -> None:
    sizes = {"a": 100, "b": 100, "c": 100, "d": 100, "e": 100}
    used = {"a": 5, "b": 2, "c": 9, "d": 1, "e": 3}
    # 500 bytes against a limit of 450: enough to get under the limit would be one
    # blob; the low-water target (300) makes it two, the two least recently used.
    assert evict(used, limit=450, target=300, sizes=sizes) == {"c": 100, "a": 100}


def test_eviction_takes_hot_content_last() -> None:
    # m1 was used within the hot window: what it reaches goes only after the rest,
    # even though its layer was last read long ago.
    tags = [tag("app", "v1", "m1", 0.5), tag("app", "v2", "m2", 30)]
    used = {"m1": 0.5, "l1": 50, "c1": 50, "base": 50, "m2": 30, "c2": 30, "l2": 30}
    victims = evict(used, limit=900, target=500, tags=tags)
    assert set(victims) == {"m3", "c3", "l3", "m2", "c2"}


def test_eviction_takes_pinned_content_after_hot_content() -> None:
    tags = [tag("app", "v1", "m1", 0.5), tag("app", "v2", "m2", 30)]
    used = {"m1": 0.5, "c1": 0.5, "l1": 0.5}
    keep = ("docker.io/app:v2",)
    # First what nothing protects, then the hot image's own blobs; the pinned image
    # (and the base layer both reach) is untouched.
    victims = evict(used, limit=500, target=400, tags=tags, keep=keep)
    assert set(victims) == {"m3", "c3", "l3", "m1", "c1", "l1"}
    # Pinned content goes only when nothing else is left, and hot-and-pinned last.
    victims = evict(used, limit=500, target=100, tags=tags, keep=keep)
    assert list(victims)[6:] == ["m2", "c2", "l2"]
    assert "base" not in victims


def test_eviction_never_takes_a_blob_in_use_even_short_of_the_target() -> None:
    used = {d: 10 for d in SIZES}
    in_use = ("m1", "c1", "l1", "base", "m2", "c2", "l2", "m3")
    victims = evict(used, limit=500, target=100, in_use=in_use)
    assert set(victims) == {"c3", "l3"}


def test_eviction_counts_access_not_yet_written_to_the_index() -> None:
    sizes = {"a": 100, "b": 100, "c": 100}
    used = {"a": 9, "b": 8, "c": 7}
    snap = snapshot([], used)
    victims = plan_eviction(
        snap,
        sizes,
        {},
        {},
        in_use=(),
        keep=(),
        limit=250,
        target=200,
        hot_since=NOW,
        pending={"a": NOW},  # read a moment ago, still in memory
    )
    assert victims == {"b": 100}


def test_eviction_falls_back_to_file_times_without_access_records() -> None:
    sizes = {"old": 100, "new": 100}
    mtimes = {"old": NOW - 10 * DAY, "new": NOW - DAY}
    victims = plan_eviction(
        Snapshot([], {}, {}),
        sizes,
        mtimes,
        {},
        in_use=(),
        keep=(),
        limit=150,
        target=100,
        hot_since=NOW,
    )
    assert victims == {"old": 100}
