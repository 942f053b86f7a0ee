"""The links rule on its own: what counts as a link, how long one serves, and what an
older cache's links become (a real index on disk, a scripted upstream)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

import pytest

from cacheproxy.errors import BlobUnknown, RegistryError, UpstreamUnavailable
from cacheproxy.layout import CacheLayout
from cacheproxy.links import LINKS_MARKER, Links, derive_links, pair
from cacheproxy.oci import OCI_MANIFEST, parse_digest
from cacheproxy.store.files import BlobStore
from cacheproxy.store.index import Index, TagEntry, TagKey
from cacheproxy.upstream.client import Upstream
from tests.support.clock import Clock

DIGEST = parse_digest("sha256:" + "a" * 64)
TTL = 100.0


class Answer:
    def __init__(self, status: int) -> None:
        self.status = status
        self.headers: dict[str, str] = {}

    def release(self) -> None:
        return None


class ScriptedUpstream:
    """Answers each HEAD with the next status (or raises the next error)."""

    name = "registry.test"

    def __init__(self, *answers: int | RegistryError) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def request(self, method: str, path: str, **_: Any) -> Answer:
        self.asked.append(f"{method} {path}")
        answer = self.answers.pop(0)
        if isinstance(answer, RegistryError):
            raise answer
        return Answer(answer)


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index")


def links_for(index: Index, wall: Clock, offline: bool = False) -> Links:
    return Links(index, offline=offline, ttl=TTL, wall=wall)


def up(scripted: ScriptedUpstream) -> Upstream:
    return cast(Upstream, scripted)


async def test_a_fresh_link_serves_without_asking(index: Index) -> None:
    wall = Clock(1_000_000.0)
    links = links_for(index, wall)
    await links.add("registry.test", "app", [str(DIGEST)])
    upstream = ScriptedUpstream()
    wall.now += TTL - 1
    assert await links.vouch(up(upstream), "app", DIGEST, "blob", held=True)
    assert upstream.asked == []


async def test_an_old_link_is_confirmed_again(index: Index) -> None:
    wall = Clock(1_000_000.0)
    links = links_for(index, wall)
    await links.add("registry.test", "app", [str(DIGEST)])
    wall.now += TTL + 1
    upstream = ScriptedUpstream(200)
    assert await links.vouch(up(upstream), "app", DIGEST, "blob", held=True)
    assert upstream.asked == [f"HEAD /v2/app/blobs/{DIGEST}"]
    # Confirmed now: fresh again, no second HEAD.
    assert await links.vouch(up(upstream), "app", DIGEST, "blob", held=True)
    assert len(upstream.asked) == 1


async def test_an_old_link_serves_while_the_upstream_cannot_answer(index: Index) -> None:
    wall = Clock(1_000_000.0)
    links = links_for(index, wall)
    await links.add("registry.test", "app", [str(DIGEST)])
    wall.now += TTL + 1
    for failure in (UpstreamUnavailable("down"), 503, 429):
        upstream = ScriptedUpstream(failure)
        assert await links.vouch(up(upstream), "app", DIGEST, "blob", held=True)
        assert len(upstream.asked) == 1
    # Never linked at all, the same failure is the client's answer.
    with pytest.raises(UpstreamUnavailable):
        await links.vouch(up(ScriptedUpstream(503)), "other", DIGEST, "blob", held=True)


async def test_a_refusal_drops_an_old_link(index: Index) -> None:
    wall = Clock(1_000_000.0)
    links = links_for(index, wall)
    await links.add("registry.test", "app", [str(DIGEST)])
    wall.now += TTL + 1
    with pytest.raises(BlobUnknown):
        await links.vouch(up(ScriptedUpstream(404)), "app", DIGEST, "blob", held=True)
    assert pair("registry.test", "app") not in await index.links(str(DIGEST))
    assert pair("registry.test", "app") not in index.links_sync(str(DIGEST))


async def test_offline_an_old_link_still_serves(index: Index) -> None:
    wall = Clock(1_000_000.0)
    await links_for(index, wall).add("registry.test", "app", [str(DIGEST)])
    wall.now += 100 * TTL
    offline = links_for(index, wall, offline=True)
    assert await offline.vouch(up(ScriptedUpstream()), "app", DIGEST, "blob", held=True)
    with pytest.raises(BlobUnknown):
        await offline.vouch(up(ScriptedUpstream()), "other", DIGEST, "blob", held=True)


async def test_unlinked_content_is_confirmed_only_when_held(index: Index) -> None:
    links = links_for(index, Clock(1_000_000.0))
    upstream = ScriptedUpstream(200)
    # Not held: the fetch that follows asks the upstream itself.
    assert not await links.vouch(up(upstream), "app", DIGEST, "blob", held=False)
    assert upstream.asked == []
    assert await links.vouch(up(upstream), "app", DIGEST, "blob", held=True)
    assert upstream.asked == [f"HEAD /v2/app/blobs/{DIGEST}"]


async def test_linking_again_does_not_rewrite_every_time(index: Index) -> None:
    wall = Clock(1_000_000.0)
    links = links_for(index, wall)
    await links.add("registry.test", "app", [str(DIGEST)])
    first = (await index.links(str(DIGEST)))[pair("registry.test", "app")]
    wall.now += TTL / 20
    await links.add("registry.test", "app", [str(DIGEST)])
    assert (await index.links(str(DIGEST)))[pair("registry.test", "app")] == first
    wall.now += TTL
    await links.add("registry.test", "app", [str(DIGEST)])
    assert (await index.links(str(DIGEST)))[pair("registry.test", "app")] == wall.now


def put(store: BlobStore, data: bytes) -> str:
    digest = parse_digest("sha256:" + hashlib.sha256(data).hexdigest())
    store.put(digest, data)
    return str(digest)


async def test_an_older_cache_keeps_only_what_its_tags_checked(tmp_path: Path) -> None:
    """Links of the old format (which linked a manifest's subject too) are dropped; a
    cached tag's own config and layers are linked again, dated long ago: they serve
    offline, and online each is confirmed at its first use."""
    store = BlobStore(CacheLayout(tmp_path / "cache"))
    store.prepare()
    index = Index(tmp_path / "index")
    config, layer, private = put(store, b"{}"), put(store, b"layer"), put(store, b"secret")
    manifest = json.dumps(
        {
            "mediaType": OCI_MANIFEST,
            "config": {"digest": config},
            "layers": [{"digest": layer}],
            "subject": {"digest": private},
        }
    ).encode()
    top = put(store, manifest)
    index.set_tag_sync(
        TagKey("registry.test", "app", "v1", (OCI_MANIFEST,)),
        TagEntry(top, OCI_MANIFEST, len(manifest), 0.0),
    )
    # What the old format wrote: bare pairs, the subject among them.
    raw = cast(Any, index)._cache
    for digest in (top, config, layer, private):
        raw.set("link\0" + digest, (pair("registry.test", "app"),))
    assert derive_links(store, index) == 3
    assert index.get_sync(LINKS_MARKER)
    wanted = pair("registry.test", "app")
    for digest in (top, config, layer):
        assert index.links_sync(digest) == {wanted: 0.0}
    assert index.links_sync(private) == {}
    # Once only.
    assert derive_links(store, index) == 0
    offline = Links(index, offline=True, ttl=TTL)
    assert await offline.vouch(
        up(ScriptedUpstream()), "app", parse_digest(layer), "blob", held=True
    )
    online = Links(index, ttl=TTL)
    upstream = ScriptedUpstream(200)
    assert await online.vouch(up(upstream), "app", parse_digest(layer), "blob", held=True)
    assert upstream.asked == [f"HEAD /v2/app/blobs/{layer}"]
