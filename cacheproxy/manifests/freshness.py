"""How fresh a tag must be, by the ``[[freshness]]`` rules (first match wins), and
why a cached one is served stale when the upstream does not confirm it.

The operator's levers: a short ttl for ``latest`` and release candidates, a long
one for everything else; a pinned tag resolved once and kept until ``cacheproxy
refresh``; a tag served stale on the upstream's 404 (an image deleted upstream) or
401/403 (a login that expired), not only on 429, 5xx and offline.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..config.freshness import DEFAULT_STALE_ON, FreshnessRule
from ..errors import (
    Denied,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    TooManyRequests,
    Unauthorized,
    UpstreamUnavailable,
)

# (upstream, repository, tag) looked up lately: rules are globs, a pull asks often.
MEMO = 10_000


@dataclass(frozen=True, slots=True)
class Freshness:
    """What the first matching rule says of one tag."""

    ttl: float
    pin: bool
    stale_on: frozenset[str]
    max_stale: float


class FreshnessRules:
    """The rules, with ``tag_ttl``/``max_stale`` as the defaults."""

    def __init__(self, rules: Sequence[FreshnessRule], ttl: float, max_stale: float) -> None:
        self._rules = tuple(rules)
        self._ttl = ttl
        self._max_stale = max_stale
        self._memo: OrderedDict[tuple[str, str, str], Freshness] = OrderedDict()

    def of(self, upstream: str, repo: str, tag: str) -> Freshness:
        key = (upstream, repo, tag)
        found = self._memo.get(key)
        if found is None:
            found = self._first(f"{upstream}/{repo}", tag)
            self._memo[key] = found
            if len(self._memo) > MEMO:
                self._memo.popitem(last=False)
        return found

    def tolerates(self, upstream: str, repo: str) -> frozenset[str]:
        """The refusals a repository's rules serve a cached tag stale on: its content
        linked before keeps serving on them too (a 404 rule keeps a deleted image's
        blobs, not only its tag)."""
        target = f"{upstream}/{repo}"
        reasons: set[str] = set()
        for rule in self._rules:
            if any(fnmatch.fnmatchcase(target, p) for p in rule.repositories):
                reasons |= set(rule.stale_on)
        return frozenset(reasons & {"404", "401", "403"})

    def _first(self, target: str, tag: str) -> Freshness:
        for rule in self._rules:
            if any(fnmatch.fnmatchcase(target, p) for p in rule.repositories) and any(
                fnmatch.fnmatchcase(tag, p) for p in rule.tags
            ):
                return Freshness(
                    self._ttl if rule.ttl is None else rule.ttl,
                    rule.pin,
                    frozenset(rule.stale_on),
                    self._max_stale if rule.max_stale is None else rule.max_stale,
                )
        return Freshness(self._ttl, False, frozenset(DEFAULT_STALE_ON), self._max_stale)


def reason_of(exc: RegistryError) -> str | None:
    """Why the upstream did not confirm a tag, in the rules' words (None: another
    error, never a reason to serve stale)."""
    if isinstance(exc, TooManyRequests):
        return "429"
    if isinstance(exc, UpstreamUnavailable):
        return "5xx" if exc.answered is not None and exc.answered >= 500 else "offline"
    if isinstance(exc, ManifestUnknown | NameUnknown):
        return "404"
    if isinstance(exc, Unauthorized):
        return "401"
    if isinstance(exc, Denied):
        return "403"
    return None
