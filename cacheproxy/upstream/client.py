"""One upstream registry: its HTTP session, its auth, its redirects, its errors.

Every upstream request goes through :meth:`Upstream.request`: it adds auth,
retries once on 401 with a fresh token, and follows redirects itself so that the
``Authorization`` header never reaches another host (presigned S3 URLs, CDNs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict

from ..config import UpstreamConfig
from ..errors import (
    Denied,
    RegistryError,
    TooManyRequests,
    Unauthorized,
    UpstreamUnavailable,
)
from .auth import Challenge, Token, TokenCache, basic_header, fetch_bearer, parse_challenge

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
USER_AGENT = "cacheproxy/0.1"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    read: float


class Upstream:
    """A client for one upstream registry, shared by every request to it."""

    def __init__(
        self,
        config: UpstreamConfig,
        timeouts: Timeouts,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url.rstrip("/")
        self._clock = clock
        self._basic = (
            basic_header(config.username, config.password or "")
            if config.username is not None
            else None
        )
        self.tokens = TokenCache(clock)
        self._challenge: Challenge | None = None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
            ),
            # Blobs are stored and verified byte for byte: never decode them.
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT},
            connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=60),
        )

    async def close(self) -> None:
        await self.tokens.close()
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request with auth, following redirects; the caller releases the response.

        Raises UpstreamUnavailable when the upstream cannot be reached and
        Unauthorized when it refuses the credentials; any other status is returned.
        """
        base_headers = CIMultiDict(headers or {})
        sent_token: str | None = None
        for attempt in range(2):
            auth, sent_token = await self._auth_header(scope)
            resp = await self._send(method, self.url + path, base_headers, auth)
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
                if self._basic is None or attempt > 0:
                    raise Unauthorized("upstream requires credentials that are not configured")
            else:
                raise Unauthorized(f"upstream asks for unsupported auth {challenge.scheme!r}")
        raise Unauthorized("upstream refused the credentials")

    def _token_key(self, scope: str) -> tuple[str, str, str]:
        params = self._challenge.params if self._challenge else {}
        return (params.get("realm", ""), params.get("service", ""), scope)

    async def _auth_header(self, scope: str) -> tuple[str | None, str | None]:
        challenge = self._challenge
        if challenge is None:
            return None, None
        if challenge.scheme == "basic":
            return self._basic, None
        key = self._token_key(scope)

        async def fetch() -> Token:
            return await fetch_bearer(
                self._session, challenge, scope, self.url, self._basic, self._clock
            )

        token = await self.tokens.get(key, fetch)
        return f"Bearer {token}", token

    async def _send(
        self,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        auth: str | None,
    ) -> aiohttp.ClientResponse:
        origin = urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            send_headers = CIMultiDict(headers)
            # RFC 9110 section 15.4: a redirect to another origin is a new
            # authority; upstream credentials must not follow it.
            if auth and urlsplit(url).netloc == origin:
                send_headers["Authorization"] = auth
            try:
                resp = await self._session.request(
                    method, url, headers=send_headers, allow_redirects=False
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("upstream %s unreachable: %s", self.name, type(exc).__name__)
                raise UpstreamUnavailable(f"upstream {self.name} unreachable") from exc
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                resp.release()
                if urlsplit(url).scheme not in ("http", "https"):
                    raise UpstreamUnavailable("upstream redirected to a non-HTTP URL")
                continue
            return resp
        raise UpstreamUnavailable("upstream redirected too many times")


def error_for_status(resp: aiohttp.ClientResponse, not_found: type[RegistryError]) -> RegistryError:
    """The OCI error a client should see for an upstream's non-success status."""
    status = resp.status
    if status == 404:
        return not_found()
    if status == 401:
        return Unauthorized("upstream refused access")
    if status == 403:
        return Denied("upstream denied access")
    if status == 429:
        headers = {}
        if "Retry-After" in resp.headers:
            headers["Retry-After"] = resp.headers["Retry-After"]
        return TooManyRequests("upstream rate limit reached", headers=headers)
    if status >= 500:
        return UpstreamUnavailable(f"upstream answered {status}")
    return UpstreamUnavailable(f"upstream answered unexpected status {status}")
