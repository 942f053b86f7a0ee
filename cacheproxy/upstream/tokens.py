"""Upstream authentication: challenge parsing and the bearer token cache.

The Docker token flow (distribution's ``docs/spec/auth/token.md``): a 401 carries
``WWW-Authenticate: Bearer realm=..,service=..,scope=..``; a GET on the realm
returns ``token``/``access_token`` with ``expires_in`` (60 s when absent).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from ..errors import Unauthorized, UpstreamUnavailable
from ..numbers import parse_digits
from ..singleflight import SingleFlight
from .destinations import realm_gets_credentials

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 60.0
# A token answer is a small JSON document; more than this is not one.
MAX_TOKEN_ANSWER = 1024 * 1024
# A token is refreshed when less than this share of its lifetime is left, capped
# at REFRESH_MARGIN_MAX seconds, so a 2-second token is still reused.
REFRESH_SHARE = 0.2
REFRESH_MARGIN_MAX = 30.0
# Tokens kept per upstream. Scopes are per repository, and a client names
# repositories freely (made-up names too): the least recently used go first.
MAX_TOKENS = 1000


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` challenge (RFC 9110 section 11.6.1)."""
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return Challenge(scheme.lower(), params)


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float
    lifetime: float

    def fresh(self, now: float) -> bool:
        margin = min(REFRESH_MARGIN_MAX, self.lifetime * REFRESH_SHARE)
        return now < self.expires_at - margin


Fetcher = Callable[[], Awaitable[Token]]


class TokenCache:
    """Tokens per (realm, service, scope), at most ``limit`` of them (least recently
    used out first); one fetch at a time per key."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, limit: int = MAX_TOKENS
    ) -> None:
        self._clock = clock
        self.limit = limit
        self._tokens: OrderedDict[tuple[str, str, str], Token] = OrderedDict()
        self._flight: SingleFlight[tuple[str, str, str], Token] = SingleFlight()

    @property
    def fetches(self) -> int:
        return self._flight.calls

    def __len__(self) -> int:
        return len(self._tokens)

    def cached(self, key: tuple[str, str, str]) -> str | None:
        token = self._tokens.get(key)
        if token is None:
            return None
        if not token.fresh(self._clock()):
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return token.value

    def invalidate(self, key: tuple[str, str, str], value: str) -> None:
        current = self._tokens.get(key)
        if current is not None and current.value == value:
            del self._tokens[key]

    def _keep(self, key: tuple[str, str, str], token: Token) -> None:
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.limit:
            self._tokens.popitem(last=False)

    async def get(self, key: tuple[str, str, str], fetch: Fetcher) -> str:
        value = self.cached(key)
        if value is not None:
            return value

        async def fetch_and_keep() -> Token:
            token = await fetch()
            self._keep(key, token)
            return token

        return (await self._flight.run(key, fetch_and_keep)).value

    async def close(self) -> None:
        await self._flight.close()


async def fetch_bearer(
    session: aiohttp.ClientSession,
    challenge: Challenge,
    scope: str,
    registry_url: str,
    basic: str | None,
    clock: Callable[[], float],
) -> Token:
    """Ask the challenge's realm for a token for ``scope``.

    Credentials go to the realm only when it is on the registry's own site (see
    ``destinations``: the rule distribution's proxy follows, with the Public Suffix
    List, the same scheme, and host and port for an IP address); elsewhere the
    request is anonymous.
    """
    realm = challenge.params.get("realm", "")
    if urlsplit(realm).scheme not in ("http", "https"):
        raise Unauthorized("upstream sent a bearer challenge without a usable realm")
    query = {"scope": scope} if scope else {}
    if "service" in challenge.params:
        query["service"] = challenge.params["service"]
    headers = {}
    if basic and realm_gets_credentials(realm, registry_url):
        headers["Authorization"] = basic
    started = clock()
    try:
        # No redirect is followed: where a realm sends a request (and its login) was
        # judged for the realm itself only.
        async with session.get(realm, params=query, headers=headers, allow_redirects=False) as resp:
            if resp.status in (401, 403):
                raise Unauthorized("upstream token service refused the credentials")
            if resp.status != 200:
                raise UpstreamUnavailable(f"upstream token service answered {resp.status}")
            body = await resp.content.read(MAX_TOKEN_ANSWER + 1)
            while len(body) <= MAX_TOKEN_ANSWER and (more := await resp.content.read(4096)):
                body += more
            if len(body) > MAX_TOKEN_ANSWER:
                raise UpstreamUnavailable("upstream token service answered too much")
            doc = json.loads(body)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UpstreamUnavailable("upstream token service unreachable") from exc
    if not isinstance(doc, dict):
        raise UpstreamUnavailable("upstream token service sent no token")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise UpstreamUnavailable("upstream token service sent no token")
    lifetime = max(_lifetime(doc.get("expires_in")), 1.0)
    log.debug("got upstream token for scope %s, lifetime %.0fs", scope, lifetime)
    return Token(value, started + lifetime, lifetime)


def _lifetime(raw: object) -> float:
    """``expires_in``: a JSON number (the token spec's integer) or a string of ASCII
    digits; float() would also take "inf" and "\u0663", and json.loads the literals
    Infinity and NaN. Anything else, zero included, is the spec's default."""
    if isinstance(raw, str):
        raw = parse_digits(raw.strip(" \t"))
    if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw) and raw:
        return float(raw)
    return DEFAULT_EXPIRES_IN
