"""The settings of a running proxy: one frozen :class:`Config`, declared as a table.

Each field is one setting: its type, its default and (``setting(...)``) its doc
line, flag and TOML table. ``config.load`` (the one place files, the environment
and flags are merged) and the command line read them from here, and
docs/configuration.md is generated from them; everything else receives a Config,
or narrower options made from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..numbers import parse_digits
from ..registries import DOCKER_HUB, PUBLIC_PRESETS, ecr_host, normalize_host
from .fields import CACHE_COMMANDS, ConfigError, about, setting
from .freshness import FreshnessRule
from .policy import PolicyRule
from .shared import SharedConfig
from .upstreams import UpstreamConfig

LOOPS = ("auto", "uvloop", "asyncio")
_LISTENER = "HOST:PORT"


@dataclass(frozen=True)
class AccessRule:
    """An [[access]] table: for clients matching ``subjects``, ``deny`` beats ``allow``.

    Patterns are fnmatch globs over client names (htpasswd user, token name, or
    "anonymous") and over ``upstream/repository``.
    """

    subjects: tuple[str, ...] = setting(("*",), "client names the rule is for (globs)")
    allow: tuple[str, ...] = setting(("*",), "upstream/repository globs they may pull")
    deny: tuple[str, ...] = setting((), "upstream/repository globs they may not (beats allow)")


@dataclass(frozen=True)
class Config:
    """Every setting of a running proxy."""

    listen: str = setting(
        "0.0.0.0:5000", "HOST:PORT the client listener binds", flag="--listen", metavar=_LISTENER
    )
    cache_dir: Path = field(
        default_factory=lambda: default_cache_dir(),
        metadata=about(
            "the cache directory: blobs, index, ledger",
            flag="--cache-dir",
            commands=CACHE_COMMANDS,
            shown="$XDG_CACHE_HOME/cacheproxy (~/.cache/cacheproxy)",
        ),
    )
    upstreams: tuple[UpstreamConfig, ...] = field(
        default=(), metadata=about("the registries served: [[upstream]] tables", tables=True)
    )
    presets: tuple[str, ...] = setting(
        tuple(PUBLIC_PRESETS),
        "built-in upstreams enabled without an [[upstream]] table (and ecr: private ECR)",
    )
    default_upstream: str = setting(
        DOCKER_HUB, "where a request that names no registry goes (Docker's registry-mirrors)"
    )
    tag_ttl: float = setting(
        60.0, "seconds a resolved tag is served without asking upstream again", flag="--tag-ttl"
    )
    max_stale: float = setting(
        7 * 24 * 3600.0, "seconds past its freshness a tag may be served when upstream fails"
    )
    referrers_ttl: float = setting(
        60.0, "seconds a manifest's referrers list is served without asking upstream again"
    )
    # A link is the upstream's word that a repository holds a digest (cacheproxy/links.py).
    link_ttl: float = setting(
        24 * 3600.0, "seconds a link serves before the upstream is asked again with a HEAD"
    )
    # "auto" is asyncio: see benchmarks/RESULTS.md: less CPU per GB, and it keeps
    # accepting under load.
    loop: str = setting(
        "auto",
        "event loop: asyncio (kernel sendfile), uvloop, or auto (= asyncio)",
        flag="--loop",
        choices=LOOPS,
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING, ERROR", flag="--log-level")
    pricing_file: Path | None = setting(
        None,
        "a price table replacing the packaged one",
        flag="--pricing-file",
        commands=("report",),
        shown="the packaged prices.toml",
    )
    savings_flush_interval: float = setting(
        2.0, "seconds between the ledger's writes to disk (what a crash may lose)"
    )
    connect_timeout: float = setting(10.0, "seconds to connect to an upstream")
    read_timeout: float = setting(
        60.0, "seconds without a byte from upstream before a fill is given up"
    )
    max_manifest_bytes: int = setting(4 * 1024 * 1024, "the largest manifest taken, in bytes")
    # A longer body is cut and discarded, so an upstream cannot fill the disk with
    # one endless answer.
    max_blob_size: str = setting("64GiB", 'the largest blob a fill takes ("0": no limit)')
    upstream_retries: int = setting(3, "retries of an upstream 5xx, 429 or connection failure")
    upstream_retry_budget: float = setting(10.0, "seconds those retries may take in all")
    # A request that starts a transfer (a manifest, a blob nobody is fetching) and
    # cannot connect is answered UNAVAILABLE then, unretried, and the node's runtime
    # moves on to the registry; a transfer already running keeps upstream_retries.
    upstream_fail_fast: float = setting(
        2.0, "seconds a new request may take to connect to an upstream (0: retry as the rest)"
    )
    upstream_connections: int = setting(64, "concurrent connections to one upstream")
    # Bandwidth limits (cacheproxy/rates.py): bytes a second as a size ("50MiB"), one
    # bucket shared by every transfer of its kind; "0": none.
    upstream_rate: str = setting("0", "bytes a second this node takes from its upstreams in all")
    peer_upload_rate: str = setting("0", "bytes a second this node sends its peers in all")
    prefetch_rate: str = setting(
        "0", "bytes a second prefetches and preheats take (a fill a client reads is not held)"
    )
    max_dynamic_upstreams: int = setting(
        32, "registries the ecr preset admits, kept at once (those not in use go first)"
    )
    # A client is its login, else its address (an IPv6 client its /64).
    ecr_new_registries_per_minute: int = setting(
        4, "new ecr preset registries one client may name a minute (beyond: TOOMANYREQUESTS)"
    )
    ecr_registries_per_client: int = setting(
        4, "ecr preset registries one client holds that served no pull yet (its oldest goes)"
    )
    # A host naming another region is refused unbuilt.
    ecr_regions: tuple[str, ...] = setting(
        (),
        "the AWS regions whose registries the ecr preset admits",
        shown="every region the installed botocore knows for ECR",
    )
    # The slots are shared fairly between clients (blobs/admission.py).
    max_fills: int = setting(128, "blob downloads running at once (an eighth kept for newcomers)")
    max_queued_fills: int = setting(
        512, "blob downloads waiting for a slot (beyond: TOOMANYREQUESTS)"
    )
    max_fills_per_client: int = setting(
        32, "blob downloads running or waiting for one client (a login, an address, a peer node)"
    )
    # Object stores and CDNs throttle each connection; see benchmarks/segments.py.
    upstream_segments: int = setting(
        4, "connections one blob is fetched on at once, as byte ranges (1: one stream)"
    )
    # S3's advice for parallel ranged GETs is 8-16 MB.
    segment_min_size: str = setting(
        "8MiB", "the smallest range worth a connection of its own (a smaller blob: one stream)"
    )
    # The slow-loris bound.
    client_header_timeout: float = setting(
        30.0, "seconds a client may take to send a request's headers"
    )
    keepalive_timeout: float = setting(75.0, "seconds an idle keep-alive connection is kept")
    # Progress, not the whole transfer's time: a client that never reads would hold
    # the connection and the file it reads for ever.
    send_timeout: float = setting(
        30.0, "seconds a response may go without the client taking a byte, then it is cut"
    )
    # 0: what the descriptor limit leaves room for (connections/budget.py).
    # Beyond: 503 TOOMANYREQUESTS, once idle connections are closed.
    max_connections: int = setting(
        0, "open connections on the client listener (0: from the descriptor limit, up to 4096)"
    )
    max_peer_connections: int = setting(
        0, "open connections on the peer listener (0: from the descriptor limit, up to 4096)"
    )
    # Size the pod's terminationGracePeriodSeconds above it.
    shutdown_timeout: float = setting(
        30.0, "seconds transfers in flight get to finish after SIGTERM"
    )
    max_size: str | None = setting(
        None,
        'the cache\'s size limit: bytes ("50GB", "20GiB") or a share of the disk ("80%")',
        flag="--max-size",
    )
    # Below it a miss streams through uncached and the keeper evicts until it is free
    # again. The default stays clear of the kubelet's default hard eviction
    # (nodefs.available<10%, imagefs.available<15%) and its image GC (85% used), with
    # room for the snapshots of the images being pulled.
    min_free: tuple[str, ...] = setting(
        ("10GiB", "20%"), "disk kept free: the largest of these, each bytes or a share of it"
    )
    evict_interval: float = setting(
        30.0, "seconds between eviction checks (also run after a fill completes)"
    )
    hot_window: float = setting(
        24 * 3600.0, "seconds: content of manifests used this recently is evicted last"
    )
    # Lifecycle rules: pinned patterns, expiry, tag count (lifecycle/plan.py).
    keep: tuple[str, ...] = setting(
        (), "pinned: upstream/name[:tag] globs gc never removes", table="lifecycle"
    )
    expire_days: float | None = setting(
        None,
        "gc removes tags (and content only they reach) not pulled for this many days",
        table="lifecycle",
    )
    max_tags_per_repo: int | None = setting(
        None, "gc keeps this many most recently pulled tags of each repository", table="lifecycle"
    )
    gc_interval: float = setting(
        3600.0, "seconds between lifecycle runs in the server (0: never)", table="lifecycle"
    )
    offline: bool = setting(False, "serve only the cache; never dial an upstream", flag="--offline")
    # Client access; anonymous pulls by default.
    auth_htpasswd: Path | None = setting(
        None, "client logins: bcrypt entries (htpasswd -B), Basic auth", table="auth"
    )
    auth_tokens_file: Path | None = setting(
        None, "client tokens: `<token> <client name>` a line, Bearer auth", table="auth"
    )
    auth_anonymous: bool = setting(
        True, "clients without a login may pull (false: every request authenticates)", table="auth"
    )
    access: tuple[AccessRule, ...] = field(
        default=(), metadata=about("who may pull what: [[access]] rules", tables=True)
    )
    freshness: tuple[FreshnessRule, ...] = field(
        default=(), metadata=about("how fresh tags must be: [[freshness]] rules", tables=True)
    )
    # The signature policy (cacheproxy/policy/).
    policies: tuple[PolicyRule, ...] = field(
        default=(), metadata=about("signatures required: [[policy]] tables", tables=True)
    )
    tls_cert: Path | None = setting(None, "the client listener's certificate, re-read on change")
    tls_key: Path | None = setting(None, "its private key")
    tls_reload: float = setting(10.0, "seconds between checks of the certificate files")
    # Cluster mode (cacheproxy/peers): static peer URLs, a DNS name, or a file of URLs.
    peers: tuple[str, ...] = setting(
        (),
        "cluster peers' URLs (this node's own may be among them)",
        flag="--peer",
        metavar="URL",
    )
    peers_dns: str | None = setting(
        None,
        "peers from a DNS name (NAME:PORT), re-resolved every few seconds",
        flag="--peers-dns",
        metavar="NAME:PORT",
    )
    peers_file: Path | None = setting(
        None, "peers from a file of URLs, re-read when it changes", flag="--peers-file"
    )
    self_url: str | None = setting(
        None, "this node's own URL as its peers reach it", flag="--self", metavar="URL"
    )
    peer_secret_file: Path | None = setting(
        None, "the shared secret peers sign their requests with", flag="--peer-secret-file"
    )
    peer_backoff: float = setting(
        30.0, "seconds a peer that failed is avoided before it is tried again"
    )
    peer_connect_timeout: float = setting(1.0, "seconds to connect to a peer")
    peer_read_timeout: float = setting(
        5.0, "seconds without a byte from a peer (first byte included) before it is skipped"
    )
    # So the client listener can stay on loopback.
    peer_listen: str | None = setting(
        None,
        "a listener for peers only: the signed peer path and the probes",
        flag="--peer-listen",
        metavar=_LISTENER,
    )
    # TLS between peers (the HMAC gives integrity, not confidentiality). One name for
    # every peer's certificate serves a DaemonSet reached by IP.
    peer_tls_cert: Path | None = setting(None, "the peer listener's certificate", shown="tls_cert")
    peer_tls_key: Path | None = setting(None, "its private key", shown="tls_key")
    peer_ca_file: Path | None = setting(
        None, "the CA https:// peers' certificates chain to", shown="the system's CAs"
    )
    peer_tls_name: str | None = setting(
        None, "the name every peer's certificate carries", shown="the peer URL's host"
    )
    # Each node sends to a bounded number of peers at once (a tree, not a star).
    peer_holders: bool = setting(
        True,
        "a filling node takes pieces from every node holding the blob, not its owner alone",
        flag="--no-peer-holders",
    )
    # Big enough that a request's round trip is noise next to its transfer, small
    # enough that a blob has many to spread (4 MiB takes 84 ms at 400 Mbit/s).
    peer_piece_size: str = setting("4MiB", "bytes a node asks one holder for at once (a piece)")
    # Anyone else gets 401/403.
    metrics_subjects: tuple[str, ...] = setting(
        (), "logins that may read /metrics and the cluster view (globs)", table="metrics"
    )
    metrics_loopback: bool = setting(True, "loopback clients may read them too", table="metrics")
    # It serves whoever reaches it.
    metrics_listen: str | None = setting(
        None,
        "a listener for Prometheus only: /metrics and the probes",
        flag="--metrics-listen",
        metavar=_LISTENER,
        table="metrics",
    )
    # Besides loopback, link-local and unspecified addresses; an upstream's own host
    # is never denied.
    egress_deny: tuple[str, ...] = setting(
        (), "CIDRs (and node: its own addresses) no upstream may send the proxy to"
    )
    # Anyone who reaches it would pull with those logins. Off: serve refuses.
    expose_credentials: bool = setting(
        False, "serve off loopback without client logins though it holds upstream logins"
    )
    shared: SharedConfig | None = field(
        default=None, metadata=about("the shared tier: the [shared] table", tables=True)
    )

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
    def peer_tls(self) -> bool:
        """Whether the listener peers reach serves TLS (so peer URLs are https)."""
        return self.peer_tls_cert is not None or self.tls_cert is not None

    @property
    def peer_port(self) -> int | None:
        return split_listen(self.peer_listen)[1] if self.peer_listen else None

    @property
    def metrics_port(self) -> int | None:
        return split_listen(self.metrics_listen)[1] if self.metrics_listen else None

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


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "cacheproxy"


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    port = parse_digits(port_text, 5)
    if not sep or port is None or not 0 < port < 65536:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", port
