"""Settings' values as their types, and the [shared] table: part of config.load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..sizes import parse_size
from .model import NETWORK_PATHS, REGION_RE, ConfigError, SharedConfig

# [shared] keys and their types ("size": "64MiB" or bytes); env CACHEPROXY_SHARED_<KEY>.
SHARED_KEYS: dict[str, type | str] = {
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
    "redirect_profile": str,
    "redirect_role_arn": str,
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
# S3's own bounds on a multipart upload's parts (all but the last).
MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024**3


def shared_from(raw: dict[str, Any]) -> SharedConfig:
    """The [shared] table (and CACHEPROXY_SHARED_* variables) as a checked SharedConfig."""
    typed = {key: coerce(f"shared.{key}", value, SHARED_KEYS[key]) for key, value in raw.items()}
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
    if (shared.redirect_profile or shared.redirect_role_arn) and not shared.redirect:
        raise ConfigError(
            "shared.redirect_profile and redirect_role_arn sign redirect mode's URLs:"
            " they need redirect = true"
        )
    if not 1 <= shared.redirect_expires <= 7 * 24 * 3600:
        raise ConfigError("shared.redirect_expires: 1 s to 7 days (SigV4's limit)")
    if shared.network_path not in NETWORK_PATHS:
        raise ConfigError(f"shared.network_path must be one of {', '.join(NETWORK_PATHS)}")
    if shared.region is not None and not REGION_RE.fullmatch(shared.region):
        raise ConfigError(f"shared.region: not a region name: {shared.region!r}")
    return shared


def coerce(key: str, raw: Any, kind: type | str) -> Any:
    """``raw`` (from TOML, the environment or a flag) as setting ``key`` of type ``kind``
    (a type, or "size": bytes or "64MiB"); raises ConfigError naming the setting."""
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
