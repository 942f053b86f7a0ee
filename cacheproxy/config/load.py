"""The one place settings are merged into a :class:`Config`.

Precedence, lowest first: built-in defaults, the TOML file, ``CACHEPROXY_*``
environment variables, command-line flags. Nothing else in the package reads the
environment or a file for settings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..registries import ALL_PRESETS, ecr_host, normalize_host
from ..sizes import parse_size
from .model import (
    ENV_PREFIX,
    NETWORK_PATHS,
    REGION_RE,
    AccessRule,
    Config,
    ConfigError,
    SharedConfig,
    UpstreamConfig,
    split_listen,
    upstream_from_url,
)

_SCALARS: dict[str, type] = {
    "listen": str,
    "cache_dir": Path,
    "default_upstream": str,
    "presets": tuple,
    "tag_ttl": float,
    "max_stale": float,
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
    "max_fills": int,
    "max_queued_fills": int,
    "max_fills_per_client": int,
    "upstream_segments": int,
    "segment_min_size": str,
    "client_header_timeout": float,
    "keepalive_timeout": float,
    "shutdown_timeout": float,
    "max_size": str,
    "min_free": str,
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
    "peer_holders": bool,
    "peer_piece_size": str,
    "expose_credentials": bool,
}


_LIFECYCLE_KEYS = {"keep", "expire_days", "max_tags_per_repo", "gc_interval"}

# [shared] keys and their types ("size": "64MiB" or bytes); env CACHEPROXY_SHARED_<KEY>.
_SHARED: dict[str, type | str] = {
    "bucket": str,
    "prefix": str,
    "region": str,
    "endpoint_url": str,
    "addressing_style": str,
    "aws_profile": str,
    "aws_role_arn": str,
    "tls_verify": bool,
    "ca_file": Path,
    "redirect": bool,
    "redirect_expires": int,
    "multipart_threshold": "size",
    "part_size": "size",
    "upload_concurrency": int,
    "max_pending_uploads": int,
    "connections": int,
    "segments": int,
    "connect_timeout": float,
    "read_timeout": float,
    "expire_days": float,
    "price": str,
    "network_path": str,
}
# What a piece of a blob shared between peers may be (peer_piece_size).
MIN_PIECE = 64 * 1024
MAX_PIECE = 256 * 1024 * 1024
# S3's own bounds on a multipart upload's parts (all but the last).
MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024**3


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
        upstreams = _upstreams_from_toml(doc.pop("upstream", None))
        access = _access_from_toml(doc.pop("access", None))
        if access is not None:
            values["access"] = access
        auth = doc.pop("auth", {})
        if not isinstance(auth, dict) or set(auth) - {"htpasswd", "tokens_file", "anonymous"}:
            raise ConfigError("[auth]: known keys are htpasswd, tokens_file, anonymous")
        for key, raw in auth.items():
            doc[f"auth_{key}"] = raw
        lifecycle = doc.pop("lifecycle", {})
        if not isinstance(lifecycle, dict) or set(lifecycle) - _LIFECYCLE_KEYS:
            raise ConfigError(f"[lifecycle]: known keys are {sorted(_LIFECYCLE_KEYS)}")
        doc.update(lifecycle)
        shared = doc.pop("shared", {})
        if not isinstance(shared, dict) or set(shared) - set(_SHARED):
            raise ConfigError(f"[shared]: known keys are {sorted(_SHARED)}")
        for key, raw in doc.items():
            if key not in _SCALARS:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = raw
    for key in _SCALARS:
        if ENV_PREFIX + key.upper() in env:
            values[key] = env[ENV_PREFIX + key.upper()]
    for key in _SHARED:
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
        typed["upstreams"] = tuple(_password_from_env(up, env) for up in upstreams)
    if shared:
        typed["shared"] = _shared(shared)
    config = Config(**typed)
    if "default_upstream" not in typed and config.upstreams:
        try:
            config.upstream()
        except KeyError:
            # Docker Hub is not enabled: the first configured upstream is the default.
            config = replace(config, default_upstream=config.upstreams[0].name)
    _check(config)
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


_PATH_KEYS = {"password_file", "docker_config", "ca_file"}
_BOOL_KEYS = {"ecr", "tls_verify"}


def _upstreams_from_toml(raw: object) -> list[UpstreamConfig] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConfigError("upstream: expected [[upstream]] tables")
    known = {f.name for f in fields(UpstreamConfig)}
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise ConfigError("upstream: expected [[upstream]] tables")
        unknown = set(item) - known
        if unknown:
            raise ConfigError(f"upstream: unknown keys {sorted(unknown)}")
        if "url" not in item and "name" not in item:
            raise ConfigError("upstream: every [[upstream]] needs a name or a url")
        url = str(item.get("url") or f"https://{item['name']}")
        base = upstream_from_url(url)
        values: dict[str, Any] = {"name": normalize_host(str(item.get("name", base.name)))}
        values["url"] = base.url
        if base.username is not None:
            if {"username", "password", "password_file", "password_env", "docker_config"} & set(
                item
            ):
                raise ConfigError(
                    f"upstream {values['name']}: a login in the url and in the table: use one"
                )
            values["username"], values["password"] = base.username, base.password
        for key, value in item.items():
            if key in ("name", "url"):
                continue
            if key in _PATH_KEYS:
                values[key] = Path(str(value)).expanduser()
            elif key in _BOOL_KEYS:
                if not isinstance(value, bool):
                    raise ConfigError(f"upstream {values['name']}: {key} must be true or false")
                values[key] = value
            else:
                values[key] = str(value)
        up = UpstreamConfig(**values)
        _check_pricing_keys(up)
        if up.ecr and up.region is None:
            ecr = ecr_host(up.name)
            if ecr is None:
                raise ConfigError(f"upstream {up.name}: ecr = true needs a region")
            up = replace(up, region=ecr.region)
        out.append(up)
    return out


def _password_from_env(up: UpstreamConfig, env: Mapping[str, str]) -> UpstreamConfig:
    """Read ``password_env`` here, with the rest of the environment: nothing else does."""
    if up.password_env is None or up.password is not None or up.password_file or up.docker_config:
        return up
    if up.password_env not in env:
        raise ConfigError(f"upstream {up.name}: password_env {up.password_env} is not set")
    return replace(up, password=env[up.password_env])


def _check_pricing_keys(up: UpstreamConfig) -> None:
    if up.network_path not in NETWORK_PATHS:
        raise ConfigError(
            f"upstream {up.name}: network_path must be one of {', '.join(NETWORK_PATHS)},"
            f" got {up.network_path!r}"
        )
    if up.price_region is not None and not REGION_RE.fullmatch(up.price_region):
        raise ConfigError(
            f"upstream {up.name}: price_region must be a region name such as us-west-2,"
            f" got {up.price_region!r}"
        )


def _shared(raw: dict[str, Any]) -> SharedConfig:
    """The [shared] table (and CACHEPROXY_SHARED_* variables) as a checked SharedConfig."""
    typed = {key: _coerce(f"shared.{key}", value, _SHARED[key]) for key, value in raw.items()}
    if not typed.get("bucket"):
        raise ConfigError("[shared]: bucket is required")
    shared = SharedConfig(**typed)
    if shared.addressing_style not in ("auto", "path", "virtual"):
        raise ConfigError("shared.addressing_style: expected auto, path or virtual")
    if not MIN_PART <= shared.part_size <= MAX_PART:
        raise ConfigError("shared.part_size: S3 takes parts of 5 MiB to 5 GiB")
    if shared.multipart_threshold < MIN_PART:
        raise ConfigError("shared.multipart_threshold: at least 5 MiB (S3's smallest part)")
    for key in ("upload_concurrency", "max_pending_uploads", "connections", "segments"):
        if getattr(shared, key) < 1:
            raise ConfigError(f"shared.{key} must be at least 1")
    if not 1 <= shared.redirect_expires <= 7 * 24 * 3600:
        raise ConfigError("shared.redirect_expires: 1 s to 7 days (SigV4's limit)")
    if shared.network_path not in NETWORK_PATHS:
        raise ConfigError(f"shared.network_path must be one of {', '.join(NETWORK_PATHS)}")
    if shared.region is not None and not REGION_RE.fullmatch(shared.region):
        raise ConfigError(f"shared.region: not a region name: {shared.region!r}")
    return shared


def _coerce(key: str, raw: Any, kind: type | str | None = None) -> Any:
    kind = kind or _SCALARS[key]
    if kind == "size":
        try:
            return raw if isinstance(raw, int) else parse_size(str(raw), 0)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    assert isinstance(kind, type)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is tuple:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind is Path:
            return Path(str(raw)).expanduser()
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot use {raw!r} as {kind.__name__}") from exc


def _check(config: Config) -> None:
    split_listen(config.listen)
    if config.peer_listen is not None and split_listen(config.peer_listen)[1] == config.port:
        raise ConfigError("peer_listen needs a port of its own, not listen's")
    if config.loop not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f"loop: expected auto, uvloop or asyncio, got {config.loop!r}")
    if config.tag_ttl < 0 or config.max_stale < 0:
        raise ConfigError("tag_ttl and max_stale must not be negative")
    if not config.savings_flush_interval > 0:
        raise ConfigError("savings_flush_interval must be positive")
    for key in ("max_size", "min_free", "max_blob_size", "segment_min_size", "peer_piece_size"):
        value = getattr(config, key)
        if value is not None:
            try:
                parse_size(value, 1)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    for key in ("max_blob_size", "segment_min_size", "peer_piece_size"):
        if getattr(config, key).strip().endswith("%"):
            raise ConfigError(f'{key}: expected bytes ("8MiB"), not a share of the disk')
    if parse_size(config.segment_min_size, 1) < 1:
        raise ConfigError("segment_min_size must be at least one byte")
    if not MIN_PIECE <= parse_size(config.peer_piece_size, 1) <= MAX_PIECE:
        raise ConfigError("peer_piece_size: expected 64KiB to 256MiB")
    if min(config.max_fills, config.max_fills_per_client) < 1 or config.max_queued_fills < 0:
        raise ConfigError("max_fills, max_fills_per_client: at least 1; max_queued_fills: 0 up")
    if not 1 <= config.upstream_segments <= 64:
        raise ConfigError("upstream_segments: expected 1 to 64 connections per blob")
    unknown = set(config.presets) - set(ALL_PRESETS)
    if unknown:
        raise ConfigError(f"presets: unknown {sorted(unknown)}; known: {list(ALL_PRESETS)}")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls_cert and tls_key go together")
    names = [u.name for u in config.upstreams]
    if len(names) != len(set(names)):
        raise ConfigError("upstream: two [[upstream]] tables share a name")
    try:
        config.upstream()
    except KeyError:
        raise ConfigError(
            f"default_upstream {config.default_upstream!r} is not configured"
        ) from None
