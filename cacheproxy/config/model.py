"""The settings of a running proxy: one frozen :class:`Config`, its upstreams and rules.

Built by ``config.load`` (the one place files, the environment and flags are
merged); everything else receives it, or narrower options made from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..numbers import parse_digits
from ..registries import DOCKER_HUB, PUBLIC_PRESETS, ecr_host, normalize_host

ENV_PREFIX = "CACHEPROXY_"
# How a deployment reaches an upstream (UpstreamConfig.network_path).
NETWORK_PATHS = ("internet", "nat-gateway", "cross-region", "same-region", "vpc-endpoint")
REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


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
class SharedConfig:
    """The shared tier: an S3 bucket (or an S3-compatible store) that many proxies,
    in many clusters, read blobs and manifests from by digest ([shared] in TOML)."""

    bucket: str
    # Keys are <prefix>/blobs/<algorithm>/<hex>.
    prefix: str = "cacheproxy"
    region: str | None = None
    # An S3-compatible store (MinIO, Ceph RGW, R2, GCS interop); None: AWS S3.
    endpoint_url: str | None = None
    # "path" (http://host/bucket/key), "virtual" (http://bucket.host/key) or "auto".
    addressing_style: str = "auto"
    # Credentials: boto3's default chain, a profile, or a role assumed (refreshed).
    aws_profile: str | None = None
    aws_role_arn: str | None = None
    tls_verify: bool = True
    ca_file: Path | None = None
    # Answer a blob GET with a 307 to a presigned URL once the bucket holds it.
    redirect: bool = False
    # Seconds a presigned URL handed to a client stays valid.
    redirect_expires: int = 300
    # Credentials that sign the URLs handed to clients, when not the tier's own: a
    # presigned URL shows its access key id (X-Amz-Credential), so make it a key (or
    # role) that may only read the bucket. A profile, and/or a role assumed (from that
    # profile, else from the tier's credentials).
    redirect_profile: str | None = None
    redirect_role_arn: str | None = None
    # Uploads: one PUT below the threshold, multipart above it; parts of part_size.
    multipart_threshold: int = 64 * 1024 * 1024
    part_size: int = 16 * 1024 * 1024
    # Upload requests at once, and uploads waiting (beyond: dropped, counted).
    upload_concurrency: int = 4
    max_pending_uploads: int = 1000
    # Connections to the bucket for reads; ranges of one blob read at once.
    connections: int = 64
    segments: int = 4
    # Seconds to connect, and without a byte, before the bucket is given up for the upstream.
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    # `cacheproxy gc --shared` deletes objects last written this many days ago.
    expire_days: float | None = None
    # What a byte from the bucket costs (savings/prices.toml, [stores]): the store's
    # price entry and how this deployment reaches it.
    price: str = "aws-s3"
    network_path: str = "same-region"

    @property
    def root(self) -> str:
        """The key prefix without slashes at either end ("" for the bucket's root)."""
        return self.prefix.strip("/")


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
    # Seconds a link (the upstream's word that a repository holds a digest) serves
    # before the upstream is asked again with a HEAD (cacheproxy/links.py).
    link_ttl: float = 24 * 3600.0
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
    # The largest blob a fill takes ("64GiB"; "0": no limit); a longer body is cut
    # and discarded, so an upstream cannot fill the disk with one endless answer.
    max_blob_size: str = "64GiB"
    # Upstream 5xx/429/connection failures: retries, and the seconds they may take.
    upstream_retries: int = 3
    upstream_retry_budget: float = 10.0
    # Concurrent connections to one upstream.
    upstream_connections: int = 64
    # Registries the ecr preset admits, kept at once (least recently used go first).
    max_dynamic_upstreams: int = 32
    # The AWS regions whose registries the ecr preset admits (empty: every region the
    # installed botocore knows for ECR); a host naming another is refused unbuilt.
    ecr_regions: tuple[str, ...] = ()
    # Blob downloads running at once, waiting for a slot (beyond: TOOMANYREQUESTS),
    # and running or waiting for one client (an authenticated name, or an address);
    # the slots are shared fairly between clients (blobs/admission.py).
    max_fills: int = 128
    max_queued_fills: int = 512
    max_fills_per_client: int = 32
    # Connections one blob is fetched on at once, as byte ranges (object stores and
    # CDNs throttle each connection; see benchmarks/segments.py). 1: one stream.
    upstream_segments: int = 4
    # The smallest range worth a connection of its own; a blob no bigger comes in
    # one stream ("8MiB": S3's advice for parallel ranged GETs is 8-16 MB).
    segment_min_size: str = "8MiB"
    # Seconds a client may take to send a request's headers (slow-loris bound), and
    # an idle keep-alive connection is kept.
    client_header_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    # Seconds a response may go without the client taking a byte (progress, not the
    # whole transfer's time) before the connection is cut and the file it held is
    # released: a client that never reads would hold both for ever.
    send_timeout: float = 30.0
    # Open connections on the client listener and on the peer listener; 0: what the
    # descriptor limit leaves room for, up to 4096 (see connections/budget.py).
    # Beyond: 503 TOOMANYREQUESTS, once idle connections are closed.
    max_connections: int = 0
    max_peer_connections: int = 0
    # Seconds transfers in flight get to finish after SIGTERM (size the pod's
    # terminationGracePeriodSeconds above it).
    shutdown_timeout: float = 30.0
    # Cache size limit: bytes ("50GB", "20GiB") or a share of the disk ("80%").
    max_size: str | None = None
    # Disk space kept free: the largest of these, each bytes or a share of the file
    # system. Below it a miss streams through uncached and the keeper evicts until it
    # is free again. The default stays clear of the kubelet's default hard eviction
    # (nodefs.available<10%, imagefs.available<15%) and its image GC (85% used), with
    # room for the snapshots of the images being pulled.
    min_free: tuple[str, ...] = ("10GiB", "20%")
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
    # A listener of its own for peers (HOST:PORT): it serves only the signed peer path
    # and the probes, so the client listener can stay on loopback.
    peer_listen: str | None = None
    # TLS between peers (the HMAC gives integrity, not confidentiality): the peer
    # listener's certificate (default: tls_cert/tls_key), the CA the peers'
    # certificates chain to when dialling https:// peers (default: the system's),
    # and the name every peer's certificate carries when it is not the URL's host
    # (one certificate for every node of a DaemonSet reached by IP).
    peer_tls_cert: Path | None = None
    peer_tls_key: Path | None = None
    peer_ca_file: Path | None = None
    peer_tls_name: str | None = None
    # A node filling a blob takes pieces from every node that holds it or is filling
    # it, as the blob's owner names them, and each node sends to a bounded number of
    # peers at once (a tree, not a star). Off: every node takes the blob from its
    # owner alone (the star).
    peer_holders: bool = True
    # Bytes a node asks one holder for at once (a piece): big enough that a request's
    # round trip is noise next to its transfer, small enough that a blob has many to
    # spread (4 MiB takes 84 ms at 400 Mbit/s).
    peer_piece_size: str = "4MiB"
    # Who reads /metrics and the cluster view on the client listener ([metrics]
    # table): loopback clients (unless switched off) and clients logged in as one of
    # these subjects (globs as in [[access]]); anyone else gets 401/403.
    metrics_subjects: tuple[str, ...] = ()
    metrics_loopback: bool = True
    # A listener of its own for Prometheus (HOST:PORT): it serves only /metrics and
    # the probes, to whoever reaches it.
    metrics_listen: str | None = None
    # Addresses no upstream may send the proxy to (redirects, token realms), besides
    # loopback, link-local and unspecified ones: CIDRs, and "node" for the node's own
    # interface addresses (the cluster's pod and service ranges, say). An upstream's
    # own host is never denied. Empty: private ranges are allowed.
    egress_deny: tuple[str, ...] = ()
    # Serve on a non-loopback address without client logins although the proxy holds
    # upstream logins: anyone who reaches it pulls with them. Off: serve refuses.
    expose_credentials: bool = False
    # The shared tier ([shared] table); None: none.
    shared: SharedConfig | None = None

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
