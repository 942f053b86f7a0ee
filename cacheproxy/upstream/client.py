"""One upstream registry: its HTTP session, its auth, its redirects, its errors.

Every upstream request goes through :meth:`Upstream.request`: it adds auth,
retries once on 401 with a fresh token, and follows redirects itself so that the
``Authorization`` header never reaches another host (presigned S3 URLs, CDNs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict

from ..config import UpstreamConfig
from ..errors import (
    CredentialsUnavailable,
    DestinationRefused,
    Unauthorized,
    UpstreamUnavailable,
)
from .answers import error_for_status, pull_scope, read_bounded, says_expired
from .credentials import Credentials
from .destinations import Destinations, GuardedResolver, RefusedAddress, same_origin
from .egress import EgressDeny
from .limits import RETRY_STATUSES, RateLimit, RetryPolicy, parse_rate_limit
from .tokens import Challenge, Token, TokenCache, fetch_bearer, parse_challenge

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# Connections per upstream for everything but blob bodies.
CONTROL_CONNECTIONS = 16
READ_BUFSIZE = 512 * 1024
USER_AGENT = "cacheproxy/0.1"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    read: float
    #: Seconds a request with no transfer running may spend reaching the upstream:
    #: one connect, not retried (0: connect failures are retried like the rest).
    fail_fast: float = 0.0


class ConnectFailed(UpstreamUnavailable):
    """No connection could be made: refused, no route, no such name, timed out."""


class Upstream:
    """A client for one upstream registry, shared by every request to it."""

    def __init__(
        self,
        config: UpstreamConfig,
        timeouts: Timeouts,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.monotonic,
        offline: bool = False,
        retry: RetryPolicy | None = None,
        connections: int = 64,
        egress_deny: EgressDeny | None = None,
    ) -> None:
        self.config = config
        self.offline = offline
        self.retries = 0
        self._retry = retry or RetryPolicy()
        # Bounds the requests in flight to this upstream; a blob body holds its slot
        # only until the response headers arrive (the connectors bound sockets).
        # Blob bodies and everything else (manifests, tags, HEADs, tokens) have
        # separate slots and sockets: a manifest never waits behind slow fills.
        self._slots = asyncio.Semaphore(connections)
        self._control_slots = asyncio.Semaphore(CONTROL_CONNECTIONS)
        # Requests inside request() now; a retired upstream takes no new ones.
        self._active = 0
        #: Fills using this upstream (their bodies outlive request()): never retired.
        self.pins = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._retired = False
        self.name = config.name
        self.url = config.url.rstrip("/")
        self.credentials = credentials
        self.rate_limit: RateLimit | None = None
        self.requests_sent = 0
        #: When (by ``clock``) a request last got a 2xx answer: the upstream is in use.
        self.last_success: float | None = None
        #: Requests that found no connection, and answers that were 5xx.
        self.unreachable = 0
        self.server_errors = 0
        self._clock = clock
        self.tokens = TokenCache(clock)
        self._challenge: Challenge | None = None
        self.destinations = Destinations(self.url, egress_deny)
        self._resolver = GuardedResolver(self.destinations)
        ssl: ssl_module.SSLContext | bool = True
        if not config.tls_verify:
            ssl = False
        elif config.ca_file is not None:
            ssl = ssl_module.create_default_context(cafile=str(config.ca_file))
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        # A node's runtime asks its registry itself only once the proxy answered:
        # a request that starts nothing yet fails within fail_fast (spegel #551).
        self._fresh: aiohttp.ClientTimeout | None = None
        if timeouts.fail_fast > 0:
            connect = min(timeouts.connect, timeouts.fail_fast)
            self._fresh = aiohttp.ClientTimeout(
                total=None, sock_connect=connect, sock_read=timeouts.read
            )
        self._blob_session = aiohttp.ClientSession(
            timeout=timeout,
            # Blobs are stored and verified byte for byte: never decode them.
            auto_decompress=False,
            # A blob body keeps arriving while the last piece is written and hashed:
            # pieces of up to a MiB, not 64 KiB (fewer hand-offs per GB).
            read_bufsize=READ_BUFSIZE,
            headers={"User-Agent": USER_AGENT},
            connector=aiohttp.TCPConnector(
                limit=connections, ttl_dns_cache=60, ssl=ssl, resolver=self._resolver
            ),
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT},
            # The same guard on names as the blobs' (tokens, manifests, HEADs too).
            connector=aiohttp.TCPConnector(
                limit=CONTROL_CONNECTIONS, ttl_dns_cache=60, ssl=ssl, resolver=self._resolver
            ),
        )

    def served_within(self, seconds: float) -> bool:
        """Whether a request to this upstream succeeded (2xx) in the last ``seconds``."""
        return self.last_success is not None and self._clock() - self.last_success <= seconds

    async def retire(self, grace: float) -> None:
        """Take no new requests, let those in flight finish (up to ``grace`` seconds),
        then close. Bodies still being read after that break and are resumed."""
        self._retired = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._quiet.wait()
        await self.close()

    async def close(self) -> None:
        await self.tokens.close()
        if self.credentials is not None:
            await self.credentials.close()
        await self._blob_session.close()
        await self._session.close()
        await self._resolver.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        blob: bool = False,
        running: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send a request with auth, following redirects; the caller releases the response.

        ``blob``: a blob body, on the connections kept for blobs. ``running``: the
        request continues a transfer already under way (a resume, another range);
        any other request that cannot connect fails at once, within ``fail_fast``.

        Raises UpstreamUnavailable when the upstream cannot be reached and
        Unauthorized when it refuses the credentials; any other status is returned.
        A refused token is replaced once and the request retried, so a client never
        sees an expiry. 5xx, 429 and connection failures are retried with backoff
        while the retry budget lasts, honouring ``Retry-After`` (RFC 9110 10.2.3).
        """
        if self.offline:
            raise UpstreamUnavailable("the proxy is offline: the cache only")
        if self._retired:
            raise UpstreamUnavailable(f"upstream {self.name} was let go; try again")
        self._active += 1
        self._quiet.clear()
        try:
            resp = await self._request(method, path, scope, headers, blob, running)
            if 200 <= resp.status < 300:
                self.last_success = self._clock()
            return resp
        finally:
            self._active -= 1
            if not self._active:
                self._quiet.set()

    async def _request(
        self,
        method: str,
        path: str,
        scope: str,
        headers: Mapping[str, str] | None,
        blob: bool,
        running: bool,
    ) -> aiohttp.ClientResponse:
        deadline = self._clock() + self._retry.budget
        fresh = None if running else self._fresh
        attempt = 0
        while True:
            try:
                async with self._slots if blob else self._control_slots:
                    session = self._blob_session if blob else self._session
                    resp = await self._authorized(session, method, path, scope, headers, fresh)
            except (CredentialsUnavailable, DestinationRefused):
                raise
            except ConnectFailed:
                delay = self._retry.delay(attempt, None)
                if fresh or attempt >= self._retry.attempts or self._clock() + delay > deadline:
                    raise
            except UpstreamUnavailable:
                delay = self._retry.delay(attempt, None)
                if attempt >= self._retry.attempts or self._clock() + delay > deadline:
                    raise
            else:
                if resp.status >= 500:
                    self.server_errors += 1
                if resp.status not in RETRY_STATUSES:
                    return resp
                delay = self._retry.delay(attempt, resp.headers.get("Retry-After"))
                if attempt >= self._retry.attempts or self._clock() + delay > deadline:
                    return resp
                resp.release()
            attempt += 1
            self.retries += 1
            log.info("upstream %s: retry %d of %s in %.1f s", self.name, attempt, path, delay)
            await asyncio.sleep(delay)

    async def fetch_storage(
        self, url: str, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """GET a URL a blob request was redirected to (a presigned storage URL) as is.

        No credentials (they never leave the registry's origin) and no retries: on
        any failure the caller goes back through the registry, which signs anew.
        Raises UpstreamUnavailable when the storage cannot be reached.
        """
        if self.offline:
            raise UpstreamUnavailable("the proxy is offline: the cache only")
        async with self._slots:
            return await self._send(
                self._blob_session, "GET", url, CIMultiDict(headers or {}), None
            )

    async def _authorized(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        scope: str,
        headers: Mapping[str, str] | None,
        fresh: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        base_headers = CIMultiDict(headers or {})
        for _attempt in range(3):
            auth, sent_token, sent_basic = await self._auth_header(scope)
            url = self.url + path
            resp = await self._send(session, method, url, base_headers, auth, fresh)
            limit = parse_rate_limit(resp.headers, self._clock())
            if limit is not None:
                self.rate_limit = limit
            if resp.status == 403 and sent_basic is not None and await says_expired(resp):
                # ECR: "Your authorization token has expired".
                resp.release()
                assert self.credentials is not None
                await self.credentials.refresh(sent_basic)
                continue
            if resp.status != 401:
                return resp
            challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            resp.release()
            if challenge is None:
                raise Unauthorized("upstream requires authentication")
            if challenge.scheme == "bearer":
                self._challenge = challenge
                if sent_token is not None:
                    self.tokens.invalidate(self._token_key(scope), sent_token)
            elif challenge.scheme == "basic":
                self._challenge = challenge
                if self.credentials is None:
                    raise Unauthorized("upstream requires credentials that are not configured")
                if sent_basic is not None and not await self.credentials.refresh(sent_basic):
                    raise Unauthorized("upstream refused the configured credentials")
            else:
                raise Unauthorized(f"upstream asks for unsupported auth {challenge.scheme!r}")
        raise Unauthorized("upstream refused the credentials")

    def _token_key(self, scope: str) -> tuple[str, str, str]:
        params = self._challenge.params if self._challenge else {}
        return (params.get("realm", ""), params.get("service", ""), scope)

    async def _auth_header(self, scope: str) -> tuple[str | None, str | None, str | None]:
        """(Authorization value, bearer token sent, Basic value sent)."""
        challenge = self._challenge
        creds = self.credentials
        if challenge is None or challenge.scheme == "basic":
            if creds is not None and (challenge is not None or creds.preemptive):
                basic = await creds.header()
                return basic, None, basic
            return None, None, None
        key = self._token_key(scope)
        login = await creds.header() if creds is not None else None

        async def fetch() -> Token:
            if not self.destinations.url_allowed(challenge.params.get("realm", "")):
                log.warning("upstream %s named a token realm on a forbidden address", self.name)
                raise DestinationRefused("upstream named a token realm the proxy does not dial")
            return await fetch_bearer(self._session, challenge, scope, self.url, login, self._clock)

        token = await self.tokens.get(key, fetch)
        return f"Bearer {token}", token, None

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        auth: str | None,
        fresh: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        first = url
        for _ in range(MAX_REDIRECTS + 1):
            send_headers = CIMultiDict(headers)
            # RFC 9110 section 15.4: a redirect to another origin (RFC 6454: scheme,
            # host and port; https -> http on one host too) is a new authority, and
            # upstream credentials must not follow it.
            if auth and same_origin(url, first):
                send_headers["Authorization"] = auth
            self.requests_sent += 1
            try:
                if fresh is None:
                    resp = await session.request(
                        method, url, headers=send_headers, allow_redirects=False
                    )
                else:
                    resp = await session.request(
                        method, url, headers=send_headers, allow_redirects=False, timeout=fresh
                    )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if isinstance(exc, RefusedAddress) or isinstance(
                    getattr(exc, "os_error", None), RefusedAddress
                ):
                    # The resolver refused every address of a name (logged there).
                    raise DestinationRefused() from exc
                log.warning("upstream %s unreachable: %s", self.name, type(exc).__name__)
                self.unreachable += 1
                if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
                    raise ConnectFailed(f"upstream {self.name} unreachable") from exc
                raise UpstreamUnavailable(f"upstream {self.name} unreachable") from exc
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                resp.release()
                if urlsplit(url).scheme not in ("http", "https"):
                    raise UpstreamUnavailable("upstream redirected to a non-HTTP URL")
                if not self.destinations.url_allowed(url):
                    log.warning("upstream %s redirected to a forbidden address", self.name)
                    raise DestinationRefused("upstream redirected to an address not dialled")
                continue
            return resp
        raise UpstreamUnavailable("upstream redirected too many times")


__all__ = [
    "ConnectFailed",
    "Timeouts",
    "Upstream",
    "error_for_status",
    "pull_scope",
    "read_bounded",
]
