"""The upstream registries' settings: :class:`UpstreamConfig`, the ``--upstream URL``
shortcut, and the ``[[upstream]]`` tables of a config file as checked UpstreamConfigs.

Part of the one place settings are merged (``load.py``): nothing else reads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..registries import ecr_host, normalize_host
from .fields import ConfigError, about, setting, settings_of

# How a deployment reaches an upstream (UpstreamConfig.network_path).
NETWORK_PATHS = ("internet", "nat-gateway", "cross-region", "same-region", "vpc-endpoint")
REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream registry and how to reach it.

    ``name`` is the host clients name (``?ns=``, a path prefix, ``hosts.toml``);
    ``url`` is where it is really reached. Secrets never appear in ``repr``.
    """

    name: str = field(metadata=about("the host clients name for it", shown="the url's host"))
    url: str = field(metadata=about("where it is really reached", shown="https://<name>"))
    username: str | None = setting(None, "the login's user name")
    password: str | None = field(default=None, repr=False, metadata=about("the login's password"))
    password_file: Path | None = setting(None, "a file holding the password")
    password_env: str | None = setting(None, "an environment variable holding the password")
    docker_config: Path | None = setting(
        None, "a Docker config.json whose auths entry for this host holds the login"
    )
    # AWS ECR: credentials from GetAuthorizationToken (boto3's default chain).
    ecr: bool = setting(False, "an AWS ECR registry: logins from GetAuthorizationToken")
    region: str | None = setting(None, "its AWS region", shown="the ECR host's")
    aws_profile: str | None = setting(
        None, "the AWS profile for ECR", shown="boto3's default chain"
    )
    aws_role_arn: str | None = setting(None, "an IAM role assumed for ECR (renewed before expiry)")
    tls_verify: bool = setting(True, "check the registry's certificate")
    ca_file: Path | None = setting(None, "the CA its certificate chains to", shown="the system's")
    # How this deployment reaches the registry, which decides the price of a byte
    # (see cacheproxy/savings/prices.toml), and the region whose prices apply.
    network_path: str = setting(
        "internet", "how this deployment reaches it: " + ", ".join(NETWORK_PATHS)
    )
    price_region: str | None = setting(
        None, "the region whose prices apply", shown="the ECR host's"
    )

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


# The keys of an [[upstream]] table and how each is read.
_KINDS = {s.name: s.kind for s in settings_of(UpstreamConfig, env_prefix=None)}


def upstream_from_url(url: str) -> UpstreamConfig:
    """The ``--upstream URL`` shortcut: one upstream named after its host.

    A login written into the URL (``https://user:pass@host``) is split out into the
    upstream's credentials: the URL and the name keep only ``scheme://host[:port]``,
    so the password never reaches a log line, a metric label or the ledger.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream: expected an http(s) URL, got {_without_login(url)!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None:
        host = f"{host}:{port}"
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return UpstreamConfig(
        name=normalize_host(host),
        url=f"{parts.scheme}://{host}",
        username=username or None,
        password=password if username else None,
    )


def _without_login(url: str) -> str:
    """``url`` with any ``user:pass@`` cut out, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>" if "@" in url else url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def upstreams_from_toml(raw: object) -> list[UpstreamConfig] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConfigError("upstream: expected [[upstream]] tables")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise ConfigError("upstream: expected [[upstream]] tables")
        unknown = set(item) - set(_KINDS)
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
            if _KINDS[key] is Path:
                values[key] = Path(str(value)).expanduser()
            elif _KINDS[key] is bool:
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


def password_from_env(up: UpstreamConfig, env: Mapping[str, str]) -> UpstreamConfig:
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
