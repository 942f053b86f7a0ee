"""The checks a merged :class:`Config` must pass before anything uses it."""

from __future__ import annotations

from ..registries import ALL_PRESETS
from ..sizes import parse_size
from .model import Config, ConfigError, split_listen

# What a piece of a blob shared between peers may be (peer_piece_size).
MIN_PIECE = 64 * 1024
MAX_PIECE = 256 * 1024 * 1024


def check(config: Config) -> None:
    """Raise ConfigError for the first setting of ``config`` that cannot be used."""
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
    if not config.send_timeout > 0:
        raise ConfigError("send_timeout must be positive (seconds a send may make no progress)")
    if config.max_connections < 0 or config.max_peer_connections < 0:
        raise ConfigError("max_connections and max_peer_connections: 0 (auto) or more")
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
