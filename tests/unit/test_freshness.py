"""The freshness rules on their own: first match wins, durations, stale reasons, and
a tag resolver under an injected clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cacheproxy.config import ConfigError, load_config
from cacheproxy.config.freshness import FreshnessRule, parse_duration
from cacheproxy.errors import (
    Denied,
    ManifestUnknown,
    TooManyRequests,
    Unauthorized,
    UpstreamUnavailable,
)
from cacheproxy.links import Links
from cacheproxy.manifests.freshness import FreshnessRules, reason_of
from cacheproxy.manifests.source import Named
from cacheproxy.manifests.tags import ManifestOptions, TagResolver
from cacheproxy.oci import MANIFEST_TYPES, OCI_MANIFEST
from cacheproxy.singleflight import SingleFlight
from cacheproxy.store.index import Index, TagKey
from tests.support.clock import Clock

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("7d", 604800.0), ("250ms", 0.25), (12, 12.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "ttl") == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "\u0663s", True, "5x"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ConfigError, match="ttl"):
        parse_duration(text, "ttl")


def test_the_first_matching_rule_wins(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(
        '[[freshness]]\nrepositories = ["docker.io/library/*"]\ntags = ["latest", "*-rc*"]\n'
        'ttl = "30s"\n'
        '[[freshness]]\nrepositories = ["registry.example.com/prod/*"]\npin = true\n'
        '[[freshness]]\nrepositories = ["*"]\nttl = "5m"\n'
        'stale_on = ["429", "5xx", "offline", "404", "401"]\nmax_stale = "7d"\n'
    )
    config = load_config(file=file, env={})
    rules = FreshnessRules(config.freshness, config.tag_ttl, config.max_stale)
    latest = rules.of("docker.io", "library/alpine", "latest")
    assert (latest.ttl, latest.pin, latest.stale_on) == (
        30.0, False, frozenset({"429", "5xx", "offline"})
    )  # fmt: skip
    assert rules.of("docker.io", "library/alpine", "3.20").ttl == 300.0
    assert rules.of("docker.io", "library/alpine", "3.20-rc1").ttl == 30.0
    assert rules.of("registry.example.com", "prod/api", "v1").pin
    other = rules.of("ghcr.io", "org/tool", "v2")
    assert "404" in other.stale_on and other.max_stale == 7 * 86400.0
    # A repository's content keeps serving on what any of its rules serve stale on.
    assert rules.tolerates("ghcr.io", "org/tool") == {"404", "401"}
    assert rules.tolerates("docker.io", "library/alpine") == {"404", "401"}
    assert FreshnessRules((), 60.0, 1.0).tolerates("x", "y") == frozenset()


def test_bad_rules(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    for text in ('stale_on = ["500"]', "pin = 1", 'ttl = "soon"', "colour = 1"):
        file.write_text(f"[[freshness]]\n{text}\n")
        with pytest.raises(ConfigError, match="freshness"):
            load_config(file=file, env={})


def test_reasons() -> None:
    answered = UpstreamUnavailable("upstream answered 502")
    answered.answered = 502
    assert reason_of(answered) == "5xx"
    assert reason_of(UpstreamUnavailable("connect refused")) == "offline"
    assert reason_of(TooManyRequests()) == "429"
    assert reason_of(ManifestUnknown()) == "404"
    assert reason_of(Unauthorized()) == "401"
    assert reason_of(Denied()) == "403"


class Chain:
    """The chain past this node's index, answering a fixed digest (or an error)."""

    def __init__(self) -> None:
        self.asked = 0
        self.error: Exception | None = None

    async def resolve(self, up: Any, key: TagKey, known: Any, body: bool) -> Named:
        self.asked += 1
        if self.error is not None:
            raise self.error
        return Named(DIGEST, OCI_MANIFEST, 100)

    async def by_digest(self, up: Any, repo: str, digest: Any) -> Any:
        raise AssertionError("not asked")


class Up:
    name = "reg.test"


async def test_a_30s_rule_revalidates_after_30s_and_a_5m_rule_does_not(tmp_path: Path) -> None:
    rules = FreshnessRules(
        (FreshnessRule(tags=("latest",), ttl=30.0), FreshnessRule(ttl=300.0)), 60.0, 3600.0
    )
    index = Index(tmp_path / "index")
    clock, chain = Clock(1_000_000.0), Chain()
    resolver = TagResolver(
        index, Links(index), chain, ManifestOptions(), SingleFlight(), clock, rules=rules
    )
    up: Any = Up()
    latest = TagKey("reg.test", "app", "latest", MANIFEST_TYPES)
    pinned = TagKey("reg.test", "app", "v1", MANIFEST_TYPES)
    for key in (latest, pinned):
        await resolver.entry(up, key, False)
    assert chain.asked == 2
    clock.now += 31
    await resolver.entry(up, latest, False)
    await resolver.entry(up, pinned, False)
    assert chain.asked == 3, "only the 30s rule's tag was asked again"
    clock.now += 300
    chain.error = ManifestUnknown("deleted")
    with pytest.raises(ManifestUnknown):  # no rule serves this one stale on 404
        await resolver.entry(up, pinned, False)
    chain.error = UpstreamUnavailable("down")
    stale = await resolver.entry(up, latest, False)
    assert (stale.entry.digest, stale.stale) == (DIGEST, "offline")
    assert resolver.stats.stale["offline"] == 1
