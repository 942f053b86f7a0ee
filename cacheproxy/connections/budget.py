"""File descriptors: the soft ``RLIMIT_NOFILE`` raised to the hard limit at start,
and the bounds on connections fitted into it beside everything else the proxy
keeps open, so that with every connection slot taken fills, the index and the
probes still have descriptors.

What is kept for the rest (``reserved``): each running fill holds its temp file and
up to ``upstream_segments`` connections; each upstream has connections of its own
for manifests and tokens; SQLite (the index, the ledger) holds a database, its
``-wal`` and ``-shm`` per worker thread; peers, the shared tier and the connections
beyond a bound being answered have theirs; and a headroom covers the listeners,
the loop, logs, certificates and the TLS handshakes a listener lets in beyond its
bound (gate.HANDSHAKES: a handshake, like an idle connection, holds one). A
connection costs two: its socket, and the blob file (or fill) it is sent.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from ..config import Config, ConfigError
from ..peers.cluster import CONTROL_CONNECTIONS as PEER_CONTROL
from ..registries import PUBLIC_PRESETS
from ..upstream.client import CONTROL_CONNECTIONS as UPSTREAM_CONTROL
from .gate import OVERFLOW

PER_CONNECTION = 2
# The bound a listener gets when none is configured, at most (and the peer
# listener's share of the room, at most): a node's runtimes and its peers open
# hundreds, not thousands, and each costs memory besides its descriptors.
AUTO_CAP = 4096
PEER_SHARE = 4
# Fewer client connections than this is no proxy: refuse to start.
MIN_CONNECTIONS = 16
# SQLite per worker thread (asyncio's default executor: up to 32), three files each.
SQLITE = 3 * 40
HEADROOM = 128
# Connections of the peer client's blob session (aiohttp's default limit).
PEER_BLOBS = 100
# A descriptor limit past this is counted as this (RLIM_INFINITY).
UNLIMITED = 1 << 20


@dataclass(frozen=True)
class Bounds:
    """The connections each listener may hold, and why."""

    client: int
    peer: int
    nofile: int
    reserved: int
    # One line saying what was lowered and why, or None.
    warning: str | None = None


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (where the system allows it);
    the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # macOS caps the soft limit below an infinite hard one: keep it
    return UNLIMITED if soft in (resource.RLIM_INFINITY, -1) or soft > UNLIMITED else soft


def reserved(config: Config) -> dict[str, int]:
    """Descriptors kept for everything but the listeners' connections, by what."""
    upstreams = len(config.upstreams) + len(set(config.presets) & set(PUBLIC_PRESETS))
    if "ecr" in config.presets:
        upstreams += config.max_dynamic_upstreams
    parts = {
        "fills": config.max_fills * (1 + config.upstream_segments),
        "upstream requests": UPSTREAM_CONTROL * upstreams,
        "SQLite": SQLITE,
        "answers beyond the bounds": OVERFLOW * (2 if config.peer_listen else 1),
        "headroom": HEADROOM,
    }
    if config.peer_mode:
        parts["peer requests"] = PEER_BLOBS + PEER_CONTROL
    if config.shared is not None:
        parts["shared tier"] = config.shared.connections
    return parts


def plan(config: Config, nofile: int) -> Bounds:
    """The bounds on connections that fit in ``nofile`` descriptors.

    A bound left at 0 takes the room there is (up to AUTO_CAP); a configured
    max_connections that does not fit is lowered (``warning`` says why). Raises
    ConfigError when fewer than MIN_CONNECTIONS client connections would fit.
    """
    parts = reserved(config)
    kept = sum(parts.values())
    room = max(0, (nofile - kept) // PER_CONNECTION)
    peer = 0
    if config.peer_listen is not None:
        peer = config.max_peer_connections or min(AUTO_CAP, max(1, room // PEER_SHARE))
    left = room - peer
    why = (
        f"RLIMIT_NOFILE is {nofile} and {kept} descriptors are kept for"
        f" {', '.join(f'{k} {v}' for k, v in parts.items())}; each connection takes"
        f" {PER_CONNECTION}" + (f", the peer listener's {peer} included" if peer else "")
    )
    if left < MIN_CONNECTIONS:
        raise ConfigError(
            f"no room for {MIN_CONNECTIONS} client connections: {why}. Raise the"
            " descriptor limit (ulimit -n, LimitNOFILE=, docker --ulimit nofile=) or lower"
            " max_fills, upstream_segments" + (" or max_peer_connections" if peer else "")
        )
    client = config.max_connections or min(AUTO_CAP, left)
    warning = None
    if client > left:
        warning = f"max_connections lowered from {client} to {left}: {why}"
        client = left
    return Bounds(client, peer, nofile, kept, warning)
