"""The one place settings are merged into a :class:`Config`.

Precedence, lowest first: built-in defaults, the TOML file, ``CACHEPROXY_*``
environment variables, command-line flags. Nothing else in the package reads the
environment or a file for settings. What each setting is called in each of them,
and its type, come from the table (``table.py``), read from the dataclasses.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .checks import check
from .fields import ConfigError, Setting, coerce
from .freshness import FreshnessRule, rules_from_toml
from .model import AccessRule, Config
from .policy import PolicyRule, policies_from_toml
from .shared import shared_from
from .table import ACCESS, BY_NAME, CONFIG_FILE, SETTINGS, SHARED, SHORTCUT, TABLES
from .upstreams import UpstreamConfig, password_from_env, upstream_from_url, upstreams_from_toml


@dataclass
class _Raw:
    """Settings as the sources give them, before they are typed and checked."""

    values: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    upstreams: list[UpstreamConfig] | None = None
    access: tuple[AccessRule, ...] | None = None
    freshness: tuple[FreshnessRule, ...] | None = None
    policies: tuple[PolicyRule, ...] | None = None


def load_config(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults, file, environment and flags into one Config."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    assert CONFIG_FILE.env is not None and SHORTCUT.env is not None
    path = file or (Path(env[CONFIG_FILE.env]) if CONFIG_FILE.env in env else None)
    raw = _Raw() if path is None else _from_file(path)
    raw.values |= _from_env(SETTINGS, env)
    raw.shared |= _from_env(SHARED, env)
    raw.values |= {key: value for key, value in flags.items() if key in BY_NAME}

    shortcut = flags.get(SHORTCUT.name) or env.get(SHORTCUT.env)
    if shortcut:
        if raw.upstreams:
            # The shortcut would silently drop the file's upstreams and their logins.
            raise ConfigError(
                f"--upstream / {SHORTCUT.env} replaces every upstream, but {path} declares"
                f" {len(raw.upstreams)} [[upstream]] table(s): use one or the other"
            )
        one = upstream_from_url(str(shortcut))
        raw.upstreams = [one]
        raw.values["default_upstream"] = one.name
        raw.values["presets"] = ()
    return _typed(raw, env)


def _typed(raw: _Raw, env: Mapping[str, str]) -> Config:
    """The merged settings as a checked Config."""
    typed = {key: coerce(key, value, BY_NAME[key].kind) for key, value in raw.values.items()}
    if raw.access is not None:
        typed["access"] = raw.access
    if raw.freshness is not None:
        typed["freshness"] = raw.freshness
    if raw.policies is not None:
        typed["policies"] = raw.policies
    if raw.upstreams is not None:
        typed["upstreams"] = tuple(password_from_env(up, env) for up in raw.upstreams)
    if raw.shared:
        typed["shared"] = shared_from(raw.shared)
    config = Config(**typed)
    if "default_upstream" not in typed and config.upstreams:
        try:
            config.upstream()
        except KeyError:
            # Docker Hub is not enabled: the first configured upstream is the default.
            config = replace(config, default_upstream=config.upstreams[0].name)
    check(config)
    return config


def _from_env(settings: Iterable[Setting], env: Mapping[str, str]) -> dict[str, str]:
    return {s.name: env[s.env] for s in settings if s.env is not None and s.env in env}


def _from_file(path: Path) -> _Raw:
    """The settings of TOML file ``path``: the top level, then its tables (a setting
    a table holds may be written at the top level too: the table's wins)."""
    doc = _read_toml(path)
    raw = _Raw(
        upstreams=upstreams_from_toml(doc.pop("upstream", None)),
        access=_access_from_toml(doc.pop("access", None)),
        freshness=rules_from_toml(doc.pop("freshness", None)),
        policies=policies_from_toml(doc.pop("policy", None)),
    )
    tabled: dict[str, Any] = {}
    for table in TABLES:
        names = {s.key: s.name for s in SETTINGS if s.table == table}
        tabled |= {names[key]: value for key, value in _table(doc, table, names).items()}
    raw.shared = _table(doc, "shared", (s.key for s in SHARED))
    for key, value in doc.items():
        if key not in BY_NAME:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        raw.values[key] = value
    raw.values |= tabled
    return raw


def _table(doc: dict[str, Any], table: str, keys: Iterable[str]) -> dict[str, Any]:
    """TOML table ``[table]`` of ``doc``, taken out of it; ConfigError for a key not
    among ``keys``."""
    known = list(keys)
    found = doc.pop(table, {})
    if not isinstance(found, dict) or set(found) - set(known):
        raise ConfigError(f"[{table}]: known keys are {', '.join(known)}")
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _access_from_toml(raw: object) -> tuple[AccessRule, ...] | None:
    """The [[access]] tables; a key a table leaves out takes AccessRule's default."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConfigError("access: expected [[access]] tables")
    keys = [s.key for s in ACCESS]
    rules = []
    for item in raw:
        if not isinstance(item, dict) or set(item) - set(keys):
            raise ConfigError(f"[[access]]: keys are {', '.join(keys)}")
        lists = {}
        for key, value in item.items():
            patterns = [value] if isinstance(value, str) else value
            if not isinstance(patterns, list) or not all(isinstance(v, str) for v in patterns):
                raise ConfigError(f"[[access]] {key}: expected a list of patterns")
            lists[key] = tuple(patterns)
        rules.append(AccessRule(**lists))
    return tuple(rules)
