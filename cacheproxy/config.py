"""The one frozen configuration object, and the one place it is merged.

Precedence, lowest first: built-in defaults, the TOML file, ``CACHEPROXY_*``
environment variables, command-line flags. Nothing else in the package reads the
environment or a file for settings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .upstream.presets import (
    ALL_PRESETS,
    DOCKER_HUB,
    PUBLIC_PRESETS,
    ecr_host,
    normalize_host,
)

ENV_PREFIX = "CACHEPROXY_"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream registry and how to reach it.

    ``name`` is the host clients name (``?ns=``, a path prefix, ``hosts.toml``);
    ``url`` is where it is really reached. Secrets never appear in ``repr``.
    """

    name: str
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    password_env: str | None = None
    # A Docker config.json whose ``auths`` entry for this host holds the login.
    docker_config: Path | None = None
    # AWS ECR: credentials from GetAuthorizationToken (boto3's default chain).
    ecr: bool = False
    region: str | None = None
    aws_profile: str | None = None
    aws_role_arn: str | None = None
    tls_verify: bool = True
    ca_file: Path | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


@dataclass(frozen=True)
class Config:
    """Every setting of a running proxy."""

    listen: str = "0.0.0.0:5000"
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    upstreams: tuple[UpstreamConfig, ...] = ()
    # Built-in upstreams enabled without an [[upstream]] table (see upstream.presets).
    presets: tuple[str, ...] = tuple(PUBLIC_PRESETS)
    # Where a request that names no registry goes (Docker's registry-mirrors).
    default_upstream: str = DOCKER_HUB
    # Seconds a resolved tag is served without asking upstream again.
    tag_ttl: float = 60.0
    # Seconds past its freshness that a tag may still be served when upstream fails.
    max_stale: float = 7 * 24 * 3600.0
    # Event loop: "uvloop", "asyncio" (kernel sendfile), or "auto".
    loop: str = "auto"
    log_level: str = "INFO"
    connect_timeout: float = 10.0
    # Seconds without a byte from upstream before a fill is given up.
    read_timeout: float = 60.0
    max_manifest_bytes: int = 4 * 1024 * 1024

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def upstream(self, name: str | None = None) -> UpstreamConfig:
        """The settings of upstream ``name`` (default: the default upstream).

        Raises KeyError for a registry that is neither configured nor an enabled
        preset: the proxy is never an open relay.
        """
        wanted = normalize_host(name or self.default_upstream)
        for up in self.upstreams:
            if wanted in (up.name, normalize_host(up.host)):
                return up
        if wanted in PUBLIC_PRESETS and wanted in self.presets:
            return UpstreamConfig(wanted, PUBLIC_PRESETS[wanted])
        ecr = ecr_host(wanted)
        if ecr is not None and "ecr" in self.presets:
            return UpstreamConfig(wanted, f"https://{wanted}", ecr=True, region=ecr.region)
        raise KeyError(wanted)


_SCALARS: dict[str, type] = {
    "listen": str,
    "cache_dir": Path,
    "default_upstream": str,
    "presets": tuple,
    "tag_ttl": float,
    "max_stale": float,
    "loop": str,
    "log_level": str,
    "connect_timeout": float,
    "read_timeout": float,
    "max_manifest_bytes": int,
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cacheproxy"


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def upstream_from_url(url: str) -> UpstreamConfig:
    """The ``--upstream URL`` shortcut: one upstream named after its host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"upstream: expected an http(s) URL, got {url!r}")
    return UpstreamConfig(name=normalize_host(parts.netloc), url=f"{parts.scheme}://{parts.netloc}")


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

    path = file or (Path(env[ENV_PREFIX + "CONFIG"]) if ENV_PREFIX + "CONFIG" in env else None)
    if path is not None:
        doc = _read_toml(path)
        upstreams = _upstreams_from_toml(doc.pop("upstream", None))
        for key, raw in doc.items():
            if key not in _SCALARS:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = raw
    for key in _SCALARS:
        if ENV_PREFIX + key.upper() in env:
            values[key] = env[ENV_PREFIX + key.upper()]
    for key, raw in flags.items():
        if key in _SCALARS:
            values[key] = raw

    shortcut = flags.get("upstream") or env.get(ENV_PREFIX + "UPSTREAM")
    if shortcut:
        one = upstream_from_url(str(shortcut))
        upstreams = [one]
        values["default_upstream"] = one.name
        values["presets"] = ()

    typed = {key: _coerce(key, raw) for key, raw in values.items()}
    if upstreams is not None:
        typed["upstreams"] = tuple(upstreams)
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
        if up.ecr and up.region is None:
            ecr = ecr_host(up.name)
            if ecr is None:
                raise ConfigError(f"upstream {up.name}: ecr = true needs a region")
            up = replace(up, region=ecr.region)
        out.append(up)
    return out


def _coerce(key: str, raw: Any) -> Any:
    kind = _SCALARS[key]
    try:
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
    if config.loop not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f"loop: expected auto, uvloop or asyncio, got {config.loop!r}")
    if config.tag_ttl < 0 or config.max_stale < 0:
        raise ConfigError("tag_ttl and max_stale must not be negative")
    unknown = set(config.presets) - set(ALL_PRESETS)
    if unknown:
        raise ConfigError(f"presets: unknown {sorted(unknown)}; known: {list(ALL_PRESETS)}")
    names = [u.name for u in config.upstreams]
    if len(names) != len(set(names)):
        raise ConfigError("upstream: two [[upstream]] tables share a name")
    try:
        config.upstream()
    except KeyError:
        raise ConfigError(
            f"default_upstream {config.default_upstream!r} is not configured"
        ) from None
