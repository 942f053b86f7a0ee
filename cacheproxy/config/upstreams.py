"""The ``[[upstream]]`` tables of a config file, as checked UpstreamConfigs.

Part of the one place settings are merged (``load.py``): nothing else reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..registries import ecr_host, normalize_host
from .model import NETWORK_PATHS, REGION_RE, ConfigError, UpstreamConfig, upstream_from_url

_PATH_KEYS = {"password_file", "docker_config", "ca_file"}
_BOOL_KEYS = {"ecr", "tls_verify"}


def upstreams_from_toml(raw: object) -> list[UpstreamConfig] | None:
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
