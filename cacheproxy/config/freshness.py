"""``[[freshness]]`` rules: how fresh a tag must be, per (upstream, repository, tag),
first match wins; and durations as operators write them ("30s", "5m", "7d")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .fields import ConfigError, setting

# When a cached tag may be served although the upstream did not confirm it now:
# it answered 429, 5xx (or could not be reached: "offline"), 404 (the tag or image
# deleted), 401 or 403 (a login that expired, or access revoked).
STALE_REASONS = ("429", "5xx", "offline", "404", "401", "403")
DEFAULT_STALE_ON = ("429", "5xx", "offline")
_DURATION = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|m|h|d|w)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object, key: str) -> float:
    """Seconds of ``value``: a number, or text such as "30s", "5m", "2h", "7d" (ASCII
    digits only); ConfigError naming ``key`` otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration such as 30s, 5m or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        found = _DURATION.fullmatch(str(value).strip()) if isinstance(value, str) else None
        if found is None or not found["n"].isascii():
            raise ConfigError(f"{key}: expected a duration such as 30s, 5m or 7d, got {value!r}")
        seconds = float(found["n"]) * _UNITS[found["unit"] or "s"]
    if seconds < 0:
        raise ConfigError(f"{key}: must not be negative")
    return seconds


@dataclass(frozen=True)
class FreshnessRule:
    """A [[freshness]] table: for tags matching both globs, how long a resolution
    serves (``ttl``), whether it is ever revalidated (``pin``), and when a cached
    one may be served stale. A key left out takes the top-level setting
    (``tag_ttl``, ``max_stale``) or the default shown."""

    repositories: tuple[str, ...] = setting(("*",), "upstream/repository globs")
    tags: tuple[str, ...] = setting(("*",), "tag globs")
    ttl: float | None = setting(None, "seconds (or 30s, 5m, 7d) a resolution serves",
                                shown="tag_ttl")  # fmt: skip
    pin: bool = setting(False, "resolved once, never revalidated until `cacheproxy refresh`")
    stale_on: tuple[str, ...] = setting(
        DEFAULT_STALE_ON,
        "when a cached tag is served stale: 429, 5xx, offline (unreachable), 404, 401, 403",
    )
    max_stale: float | None = setting(None, "how long past its ttl it may be served stale",
                                      shown="max_stale")  # fmt: skip


def rules_from_toml(raw: object) -> tuple[FreshnessRule, ...] | None:
    """The [[freshness]] tables, checked."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError("freshness: expected [[freshness]] tables")
    keys = set(FreshnessRule.__dataclass_fields__)
    rules = []
    for table in raw:
        if set(table) - keys:
            raise ConfigError(f"[[freshness]]: keys are {', '.join(sorted(keys))}")
        values: dict[str, object] = {}
        for key in ("repositories", "tags", "stale_on"):
            if key in table:
                items = [table[key]] if isinstance(table[key], str) else table[key]
                if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                    raise ConfigError(f"[[freshness]] {key}: expected a list of strings")
                values[key] = tuple(items)
        stale_on = values.get("stale_on", ())
        assert isinstance(stale_on, tuple)
        unknown = set(stale_on) - set(STALE_REASONS)
        if unknown:
            raise ConfigError(
                f"[[freshness]] stale_on: {sorted(unknown)}; known: {', '.join(STALE_REASONS)}"
            )
        for key in ("ttl", "max_stale"):
            if key in table:
                values[key] = parse_duration(table[key], f"[[freshness]] {key}")
        if "pin" in table:
            if not isinstance(table["pin"], bool):
                raise ConfigError("[[freshness]] pin: expected true or false")
            values["pin"] = table["pin"]
        rules.append(FreshnessRule(**values))  # type: ignore[arg-type]
    return tuple(rules)
