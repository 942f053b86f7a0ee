"""The checks a merged :class:`Config` must pass before anything uses it."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..networks import parse_entries
from ..rates import parse_rate
from ..registries import ALL_PRESETS
from ..sizes import parse_size
from .fields import ConfigError
from .model import LOOPS, Config, split_listen
from .upstreams import REGION_RE

# What a piece of a blob shared between peers may be (peer_piece_size).
MIN_PIECE = 64 * 1024
MAX_PIECE = 256 * 1024 * 1024


def check(config: Config) -> None:
    """Raise ConfigError for the first setting of ``config`` that cannot be used."""
    split_listen(config.listen)
    ports = {"listen": config.port, "peer_listen": config.peer_port}
    if config.peer_listen is not None and config.peer_port == config.port:
        raise ConfigError("peer_listen needs a port of its own, not listen's")
    if config.metrics_port is not None:
        for key, port in ports.items():
            if port == config.metrics_port:
                raise ConfigError(f"metrics_listen needs a port of its own, not {key}'s")
    if config.loop not in LOOPS:
        raise ConfigError(f"loop: expected auto, uvloop or asyncio, got {config.loop!r}")
    if config.tag_ttl < 0 or config.max_stale < 0:
        raise ConfigError("tag_ttl and max_stale must not be negative")
    if not config.link_ttl > 0:
        raise ConfigError("link_ttl must be positive")
    if not config.savings_flush_interval > 0:
        raise ConfigError("savings_flush_interval must be positive")
    for key in ("max_size", "max_blob_size", "segment_min_size", "peer_piece_size"):
        value = getattr(config, key)
        if value is not None:
            try:
                parse_size(value, 1)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    _check_min_free(config.min_free)
    for key in ("upstream_rate", "peer_upload_rate", "prefetch_rate"):
        try:
            parse_rate(getattr(config, key))
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    try:
        parse_entries(config.egress_deny)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
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
    if min(config.max_fills, config.max_fills_per_client) < 1 or config.max_queued_fills < 0:
        raise ConfigError("max_fills, max_fills_per_client: at least 1; max_queued_fills: 0 up")
    if not 1 <= config.upstream_segments <= 64:
        raise ConfigError("upstream_segments: expected 1 to 64 connections per blob")
    if min(config.ecr_new_registries_per_minute, config.ecr_registries_per_client) < 1:
        raise ConfigError("ecr_new_registries_per_minute, ecr_registries_per_client: at least 1")
    for region in config.ecr_regions:
        if not REGION_RE.fullmatch(region):
            raise ConfigError(f"ecr_regions: not a region name: {region[:60]!r}")
    unknown = set(config.presets) - set(ALL_PRESETS)
    if unknown:
        raise ConfigError(f"presets: unknown {sorted(unknown)}; known: {list(ALL_PRESETS)}")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls_cert and tls_key go together")
    _check_peer_tls(config)
    names = [u.name for u in config.upstreams]
    if len(names) != len(set(names)):
        raise ConfigError("upstream: two [[upstream]] tables share a name")
    try:
        config.upstream()
    except KeyError:
        raise ConfigError(
            f"default_upstream {config.default_upstream!r} is not configured"
        ) from None


def _check_min_free(terms: tuple[str, ...]) -> None:
    """``min_free``: sizes or shares of the file system below 100% (all of it free
    would take nothing); several terms ("10GiB,20%") mean the largest."""
    for term in terms:
        try:
            share = parse_size(term, 100)
        except ValueError as exc:
            raise ConfigError(f"min_free: {exc}") from None
        if term.strip().endswith("%") and share >= 100:
            raise ConfigError(f"min_free: {term!r} would keep the whole disk free")


def _check_peer_tls(config: Config) -> None:
    """Peer URLs agree with the listener peers reach: https where it serves TLS, and
    only there (a plain peer in a TLS cluster would carry blobs in clear text)."""
    if (config.peer_tls_cert is None) != (config.peer_tls_key is None):
        raise ConfigError("peer_tls_cert and peer_tls_key go together")
    if config.peer_tls_cert is not None and config.peer_listen is None:
        raise ConfigError("peer_tls_cert is the peer listener's: it needs peer_listen")
    if not config.peer_mode:
        return
    scheme = "https" if config.peer_tls else "http"
    for url in (*config.peers, *([config.self_url] if config.self_url else [])):
        if urlsplit(url).scheme != scheme:
            raise ConfigError(
                f"peers: {url!r}: the peer listener serves {scheme}"
                f" ({'a certificate' if config.peer_tls else 'no certificate'}),"
                f" so every peer URL and self_url is {scheme}://"
            )
    if scheme == "http" and (config.peer_ca_file or config.peer_tls_name):
        raise ConfigError("peer_ca_file and peer_tls_name are for https:// peers")
