"""The one place settings are merged into a :class:`Config`.

Precedence, lowest first: built-in defaults, the TOML file, ``CACHEPROXY_*``
environment variables, command-line flags. Nothing else in the package reads the
environment or a file for settings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checks import check
from .model import (
    ENV_PREFIX,
    AccessRule,
    Config,
    ConfigError,
    UpstreamConfig,
    upstream_from_url,
)
from .upstreams import password_from_env, upstreams_from_toml
from .values import SHARED_KEYS, coerce, shared_from

_SCALARS: dict[str, type] = {
    "listen": str,
    "cache_dir": Path,
    "default_upstream": str,
    "presets": tuple,
    "tag_ttl": float,
    "max_stale": float,
    "link_ttl": float,
    "loop": str,
    "log_level": str,
    "pricing_file": Path,
    "savings_flush_interval": float,
    "connect_timeout": float,
    "read_timeout": float,
    "max_manifest_bytes": int,
    "max_blob_size": str,
    "upstream_retries": int,
    "upstream_retry_budget": float,
    "upstream_connections": int,
    "max_dynamic_upstreams": int,
    "ecr_regions": tuple,
    "max_fills": int,
    "max_queued_fills": int,
    "max_fills_per_client": int,
    "upstream_segments": int,
    "segment_min_size": str,
    "client_header_timeout": float,
    "keepalive_timeout": float,
    "send_timeout": float,
    "max_connections": int,
    "max_peer_connections": int,
    "shutdown_timeout": float,
    "max_size": str,
    "min_free": tuple,
    "evict_interval": float,
    "hot_window": float,
    "keep": tuple,
    "expire_days": float,
    "max_tags_per_repo": int,
    "gc_interval": float,
    "offline": bool,
    "auth_htpasswd": Path,
    "auth_tokens_file": Path,
    "auth_anonymous": bool,
    "tls_cert": Path,
    "tls_key": Path,
    "tls_reload": float,
    "peers": tuple,
    "peers_dns": str,
    "peers_file": Path,
    "self_url": str,
    "peer_secret_file": Path,
    "peer_backoff": float,
    "peer_connect_timeout": float,
    "peer_read_timeout": float,
    "peer_listen": str,
    "peer_tls_cert": Path,
    "peer_tls_key": Path,
    "peer_ca_file": Path,
    "peer_tls_name": str,
    "peer_holders": bool,
    "peer_piece_size": str,
    "expose_credentials": bool,
    "metrics_subjects": tuple,
    "metrics_loopback": bool,
    "metrics_listen": str,
    "egress_deny": tuple,
}


_LIFECYCLE_KEYS = {"keep", "expire_days", "max_tags_per_repo", "gc_interval"}


def load_config(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults, file, environment and flags into one Config."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    values: dict[str, Any] = {}
    upstreams: list[UpstreamConfig] | None = None
    shared: dict[str, Any] = {}

    path = file or (Path(env[ENV_PREFIX + "CONFIG"]) if ENV_PREFIX + "CONFIG" in env else None)
    if path is not None:
        doc = _read_toml(path)
        upstreams = upstreams_from_toml(doc.pop("upstream", None))
        access = _access_from_toml(doc.pop("access", None))
        if access is not None:
            values["access"] = access
        auth = doc.pop("auth", {})
        if not isinstance(auth, dict) or set(auth) - {"htpasswd", "tokens_file", "anonymous"}:
            raise ConfigError("[auth]: known keys are htpasswd, tokens_file, anonymous")
        for key, raw in auth.items():
            doc[f"auth_{key}"] = raw
        metrics = doc.pop("metrics", {})
        if not isinstance(metrics, dict) or set(metrics) - {"subjects", "loopback", "listen"}:
            raise ConfigError("[metrics]: known keys are subjects, loopback, listen")
        for key, raw in metrics.items():
            doc[f"metrics_{key}"] = raw
        lifecycle = doc.pop("lifecycle", {})
        if not isinstance(lifecycle, dict) or set(lifecycle) - _LIFECYCLE_KEYS:
            raise ConfigError(f"[lifecycle]: known keys are {sorted(_LIFECYCLE_KEYS)}")
        doc.update(lifecycle)
        shared = doc.pop("shared", {})
        if not isinstance(shared, dict) or set(shared) - set(SHARED_KEYS):
            raise ConfigError(f"[shared]: known keys are {sorted(SHARED_KEYS)}")
        for key, raw in doc.items():
            if key not in _SCALARS:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = raw
    for key in _SCALARS:
        if ENV_PREFIX + key.upper() in env:
            values[key] = env[ENV_PREFIX + key.upper()]
    for key in SHARED_KEYS:
        if f"{ENV_PREFIX}SHARED_{key.upper()}" in env:
            shared[key] = env[f"{ENV_PREFIX}SHARED_{key.upper()}"]
    for key, raw in flags.items():
        if key in _SCALARS:
            values[key] = raw

    shortcut = flags.get("upstream") or env.get(ENV_PREFIX + "UPSTREAM")
    if shortcut:
        if upstreams:
            # The shortcut would silently drop the file's upstreams and their logins.
            raise ConfigError(
                f"--upstream / {ENV_PREFIX}UPSTREAM replaces every upstream, but {path} declares"
                f" {len(upstreams)} [[upstream]] table(s): use one or the other"
            )
        one = upstream_from_url(str(shortcut))
        upstreams = [one]
        values["default_upstream"] = one.name
        values["presets"] = ()

    typed = {key: raw if key == "access" else _coerce(key, raw) for key, raw in values.items()}
    if upstreams is not None:
        typed["upstreams"] = tuple(password_from_env(up, env) for up in upstreams)
    if shared:
        typed["shared"] = shared_from(shared)
    config = Config(**typed)
    if "default_upstream" not in typed and config.upstreams:
        try:
            config.upstream()
        except KeyError:
            # Docker Hub is not enabled: the first configured upstream is the default.
            config = replace(config, default_upstream=config.upstreams[0].name)
    check(config)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _access_from_toml(raw: object) -> tuple[AccessRule, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConfigError("access: expected [[access]] tables")
    rules = []
    for item in raw:
        if not isinstance(item, dict) or set(item) - {"subjects", "allow", "deny"}:
            raise ConfigError("[[access]]: keys are subjects, allow, deny")
        lists = {}
        for key in ("subjects", "allow", "deny"):
            value = item.get(key, ["*"] if key != "deny" else [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[[access]] {key}: expected a list of patterns")
            lists[key] = tuple(value)
        rules.append(AccessRule(lists["subjects"], lists["allow"], lists["deny"]))
    return tuple(rules)


def _coerce(key: str, raw: Any) -> Any:
    return coerce(key, raw, _SCALARS[key])
