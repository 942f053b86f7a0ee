"""The one frozen configuration object, and the one place it is merged.

Precedence, lowest first: built-in defaults, the TOML file, ``CACHEPROXY_*``
environment variables, command-line flags. Nothing else in the package reads the
environment or a file for settings.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .registries import (
    ALL_PRESETS,
    DOCKER_HUB,
    PUBLIC_PRESETS,
    ecr_host,
    normalize_host,
)
from .sizes import parse_size

ENV_PREFIX = "CACHEPROXY_"
# How a deployment reaches an upstream (UpstreamConfig.network_path).
NETWORK_PATHS = ("internet", "nat-gateway", "cross-region", "same-region", "vpc-endpoint")
_REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


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
    # How this deployment reaches the registry, which decides the price of a byte
    # (see cacheproxy/savings/prices.toml), and the region whose prices apply.
    network_path: str = "internet"
    price_region: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


@dataclass(frozen=True)
class AccessRule:
    """An [[access]] table: for clients matching ``subjects``, ``deny`` beats ``allow``.

    Patterns are fnmatch globs over client names (htpasswd user, token name, or
    "anonymous") and over ``upstream/repository``.
    """

    subjects: tuple[str, ...]
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()


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
    # Event loop: "asyncio" (kernel sendfile), "uvloop", or "auto" (= asyncio: see
    # benchmarks/RESULTS.md: less CPU per GB, and it keeps accepting under load).
    loop: str = "auto"
    log_level: str = "INFO"
    # Savings: a pricing file replacing the packaged one, and how often the ledger
    # writes its counters to disk (at most this many seconds are lost in a crash).
    pricing_file: Path | None = None
    savings_flush_interval: float = 2.0
    connect_timeout: float = 10.0
    # Seconds without a byte from upstream before a fill is given up.
    read_timeout: float = 60.0
    max_manifest_bytes: int = 4 * 1024 * 1024
    # Upstream 5xx/429/connection failures: retries, and the seconds they may take.
    upstream_retries: int = 3
    upstream_retry_budget: float = 10.0
    # Concurrent connections to one upstream.
    upstream_connections: int = 64
    # Seconds a client may take to send a request's headers (slow-loris bound), and
    # an idle keep-alive connection is kept.
    client_header_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    # Seconds transfers in flight get to finish after SIGTERM (size the pod's
    # terminationGracePeriodSeconds above it).
    shutdown_timeout: float = 30.0
    # Cache size limit: bytes ("50GB", "20GiB") or a share of the disk ("80%").
    max_size: str | None = None
    # Below this much free disk space a miss is streamed through without caching.
    min_free: str = "1GiB"
    # Seconds between eviction checks (also run after a fill completes).
    evict_interval: float = 30.0
    # Content reachable from manifests used within this many seconds goes last.
    hot_window: float = 24 * 3600.0
    # Lifecycle rules ([lifecycle] table in TOML): pinned patterns, expiry, tag count.
    keep: tuple[str, ...] = ()
    expire_days: float | None = None
    max_tags_per_repo: int | None = None
    # Seconds between lifecycle runs in the server (0: never; `cacheproxy gc` still works).
    gc_interval: float = 3600.0
    # Serve only the cache; never dial an upstream.
    offline: bool = False
    # Client access ([auth] table and [[access]] rules); anonymous pulls by default.
    auth_htpasswd: Path | None = None
    auth_tokens_file: Path | None = None
    auth_anonymous: bool = True
    access: tuple[AccessRule, ...] = ()
    # TLS on the listener (files re-read when they change).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Seconds between checks of the certificate files for a renewal.
    tls_reload: float = 10.0
    # Peer-to-peer cluster mode (see cacheproxy/peers): static peer URLs, a DNS name
    # re-resolved every few seconds ("name:port"), or a file of URLs re-read on change.
    peers: tuple[str, ...] = ()
    peers_dns: str | None = None
    peers_file: Path | None = None
    # This node's own URL as its peers reach it.
    self_url: str | None = None
    peer_secret_file: Path | None = None
    # Seconds a peer that failed is avoided before it is tried again.
    peer_backoff: float = 30.0
    peer_connect_timeout: float = 1.0
    # Seconds without a byte from a peer (first byte included) before it is skipped.
    peer_read_timeout: float = 5.0

    @property
    def peer_mode(self) -> bool:
        return bool(self.peers or self.peers_dns or self.peers_file)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def local_url(self) -> str:
        """This proxy's URL from its own host (a wildcard listen means loopback)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

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
    "pricing_file": Path,
    "savings_flush_interval": float,
    "connect_timeout": float,
    "read_timeout": float,
    "max_manifest_bytes": int,
    "upstream_retries": int,
    "upstream_retry_budget": float,
    "upstream_connections": int,
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
}


_LIFECYCLE_KEYS = {"keep", "expire_days", "max_tags_per_repo", "gc_interval"}


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
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
    if up.price_region is not None and not _REGION_RE.fullmatch(up.price_region):
        raise ConfigError(
            f"upstream {up.name}: price_region must be a region name such as us-west-2,"
            f" got {up.price_region!r}"
        )


def _coerce(key: str, raw: Any) -> Any:
    kind = _SCALARS[key]
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
    if config.loop not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f"loop: expected auto, uvloop or asyncio, got {config.loop!r}")
    if config.tag_ttl < 0 or config.max_stale < 0:
        raise ConfigError("tag_ttl and max_stale must not be negative")
    if not config.savings_flush_interval > 0:
        raise ConfigError("savings_flush_interval must be positive")
    for key in ("max_size", "min_free"):
        value = getattr(config, key)
        if value is not None:
            try:
                parse_size(value, 1)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
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
