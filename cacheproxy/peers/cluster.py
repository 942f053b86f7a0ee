"""This node's cluster: who the members are, who to ask for a key, and the signed client.

The peer endpoints are the registry API's pull side under ``/_cacheproxy/peer/``,
signed with the shared secret. The owner answers from its own cache or from its
own fill (one upstream fetch, streamed to every waiter, remote peers included).

The HMAC gives integrity and authenticity of requests and answers, not
confidentiality: blobs cross the network as they are. With https:// peer URLs the
client verifies each peer's certificate against ``peer_ca_file`` (only that CA, not
the system's, when it is set), and never dials a plain http:// peer: a cluster that
talks TLS does not fall back to clear text for one member.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import aiohttp

from ..config import Config, ConfigError
from ..errors import UpstreamUnavailable
from ..numbers import parse_digits
from .membership import Membership
from .ring import ask_before_self
from .signing import ANSWER_HEADER, HEADER, sign, sign_answer, verify, verify_answer

log = logging.getLogger(__name__)

PREFIX = "/_cacheproxy/peer"
# Connections to peers for manifests and tags (blob bodies have their own).
CONTROL_CONNECTIONS = 16


@dataclass
class PeerStats:
    """What this node asked of its peers and how it went (for /metrics and the
    cluster view), moved by the methods below alone."""

    blob_requests: int = 0
    manifest_requests: int = 0
    failures: int = 0
    bad_content: int = 0
    # The swarm (cacheproxy/swarm/): holder lists asked of owners, pieces asked of
    # holders, "busy" answers got, pieces that failed, fills that fell back.
    holder_lists: int = 0
    piece_requests: int = 0
    busy: int = 0
    piece_failures: int = 0
    swarm_fallbacks: int = 0
    swarm_mismatches: int = 0
    # Failures that were TLS's: a handshake or a certificate refused (in failures too).
    tls_failures: int = 0

    def count_blob_request(self) -> None:
        self.blob_requests += 1

    def count_manifest_request(self) -> None:
        self.manifest_requests += 1

    def count_failure(self, tls: bool = False) -> None:
        """A peer could not be reached, or broke off (``tls``: TLS refused it)."""
        self.failures += 1
        if tls:
            self.tls_failures += 1

    def count_bad_content(self) -> None:
        self.bad_content += 1

    def count_holder_list(self) -> None:
        self.holder_lists += 1

    def count_piece_request(self) -> None:
        self.piece_requests += 1

    def count_busy(self) -> None:
        self.busy += 1

    def count_piece_failure(self) -> None:
        self.piece_failures += 1

    def count_swarm_fallback(self) -> None:
        self.swarm_fallbacks += 1

    def count_swarm_mismatch(self) -> None:
        self.swarm_mismatches += 1


class Cluster:
    """This node's view of the cluster and its client to the other nodes."""

    def __init__(
        self,
        membership: Membership,
        secret: bytes,
        connect_timeout: float,
        read_timeout: float,
        tls: ssl.SSLContext | None = None,
        tls_name: str | None = None,
    ) -> None:
        """``tls``: the context https:// peers are verified with (None: this cluster
        talks plain http); ``tls_name``: the name their certificates carry, when it
        is not the URL's host."""
        self.membership = membership
        self.secret = secret
        self.read_timeout = read_timeout
        self.stats = PeerStats()
        self._tls = tls
        self._tls_name = tls_name
        # No total timeout: a big blob takes as long as it takes, but a peer that
        # does not connect, answer or keep sending within these is skipped. Blob
        # bodies and manifests have connections of their own: a tag never waits
        # behind blob transfers.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        verify: ssl.SSLContext | bool = tls if tls is not None else True
        self._session = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, connector=aiohttp.TCPConnector(ssl=verify)
        )
        self._control = aiohttp.ClientSession(
            timeout=timeout,
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=CONTROL_CONNECTIONS, ssl=verify),
        )

    @property
    def self_url(self) -> str:
        return self.membership.self_url

    def candidates(self, key: str) -> list[str]:
        """Healthy peers to ask for ``key`` before this node goes upstream itself."""
        return ask_before_self(key, self.membership.peers(), self.self_url)

    def asks_another(self, key: str) -> bool:
        """Whether a request for ``key`` asks another node before this one's upstream."""
        return bool(self.candidates(key))

    async def close(self) -> None:
        await self.membership.close()
        await self._session.close()
        await self._control.close()

    async def get(
        self,
        peer: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        blob: bool = False,
    ) -> aiohttp.ClientResponse:
        """A signed GET to a peer endpoint; raises UpstreamUnavailable if unreachable."""
        path_qs = f"{PREFIX}{path}?{urlencode(sorted(query.items()))}"
        secure = peer.startswith("https://")
        if self._tls is not None and not secure:
            # A member listed as http:// (a peers file, say) in a TLS cluster.
            self.stats.count_failure()
            self.membership.mark_bad(peer, "plain http in a cluster that talks TLS")
            raise UpstreamUnavailable(f"peer {peer} is not https")
        signed = {**headers, HEADER: sign(self.secret, "GET", path_qs, peer)}
        name = self._tls_name if secure else None
        try:
            session = self._session if blob else self._control
            return await session.get(
                peer + path_qs, headers=signed, allow_redirects=False, server_hostname=name
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.stats.count_failure(tls=isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError))
            self.membership.mark_bad(peer, type(exc).__name__)
            raise UpstreamUnavailable(f"peer {peer} unreachable") from exc

    def signed_answer(self, resp: aiohttp.ClientResponse, fields: Sequence[str]) -> bool:
        """Whether a peer signed ``fields`` as its answer to the request ``resp`` answers."""
        request = resp.request_info.headers.get(HEADER, "")
        return verify_answer(self.secret, request, fields, resp.headers.get(ANSWER_HEADER))

    def sign_answer(self, request: str, fields: Sequence[str]) -> str:
        """This node's signature of its answer to a peer's request signed ``request``."""
        return sign_answer(self.secret, request, fields)

    def verify_request(self, method: str, path_qs: str, value: str | None) -> bool:
        """Whether a request to this node was signed by a member, recently."""
        return verify(self.secret, method, path_qs, self.self_url, value)


async def start_cluster(config: Config) -> Cluster | None:
    """This node's cluster client when peer mode is configured, membership started."""
    if not config.peer_mode:
        return None
    if not config.self_url:
        raise ConfigError("peer mode needs self_url (--self): this node's URL for its peers")
    if config.peer_secret_file is None:
        raise ConfigError("peer mode needs peer_secret_file: peers authenticate each other")
    for url in (*config.peers, config.self_url):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"peers: expected an http(s) URL, got {url!r}")
    dns_port = config.peers_dns.rpartition(":")[2] if config.peers_dns is not None else "0"
    if parse_digits(dns_port, 5) is None:
        raise ConfigError("peers_dns: expected NAME:PORT")
    try:
        secret = (await asyncio.to_thread(config.peer_secret_file.read_bytes)).strip()
    except OSError as exc:
        raise ConfigError(f"cannot read peer_secret_file {config.peer_secret_file}") from exc
    if len(secret) < 16:
        raise ConfigError("the peer secret must be at least 16 bytes")
    tls = None
    if config.peer_tls:
        tls = await asyncio.to_thread(peer_client_context, config.peer_ca_file)
    membership = Membership(
        config.self_url,
        static=config.peers,
        dns=config.peers_dns,
        file=config.peers_file,
        backoff=config.peer_backoff,
    )
    await membership.start()
    log.info("peer mode: this node is %s; members %s", config.self_url, membership.members())
    return Cluster(
        membership,
        secret,
        config.peer_connect_timeout,
        config.peer_read_timeout,
        tls=tls,
        tls_name=config.peer_tls_name,
    )


def peer_client_context(ca_file: Path | None) -> ssl.SSLContext:
    """How https:// peers are verified: against ``ca_file`` alone when given (a
    certificate from a public CA does not make a peer), else the system's CAs.
    Raises ConfigError when the file cannot be used (blocking: it reads it)."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"peer_ca_file {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
