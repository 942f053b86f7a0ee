"""Optional client authentication and per-client allow/deny rules.

Anonymous pulls stay the default (node-local mirrors, Docker's registry-mirrors,
which cannot send mirror credentials). When configured: htpasswd Basic logins
(bcrypt, as distribution's htpasswd auth) or bearer tokens from a file, and rules
on ``upstream/repository`` patterns per client, in the spirit of ECR repository
policies. Files are re-read when they change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..config import AccessRule as Rule
from ..config import Config
from ..errors import Denied, Unauthorized
from .authfiles import WatchedFile, parse_htpasswd, parse_tokens
from .passwords import PasswordChecks, dummy_for

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
CHALLENGE = {"WWW-Authenticate": 'Basic realm="cacheproxy", charset="UTF-8"'}
# A verified Authorization value is remembered this long (bcrypt costs 0.1-0.3 s).
REMEMBER = 60.0


class ClientAuth:
    """Who a request is, and what it may pull."""

    def __init__(
        self,
        htpasswd: Path | None = None,
        tokens_file: Path | None = None,
        anonymous: bool = True,
        rules: tuple[Rule, ...] = (),
        passwords: PasswordChecks | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._htpasswd = WatchedFile(htpasswd, clock) if htpasswd else None
        self._tokens = WatchedFile(tokens_file, clock) if tokens_file else None
        self._users: dict[str, bytes] = {}
        self._dummy = b""
        #: Where bcrypt runs (its ``checker`` may be replaced, to count calls).
        self.passwords = passwords or PasswordChecks()
        self._token_names: tuple[tuple[bytes, str], ...] = ()
        self.anonymous = anonymous
        self.rules = rules
        self._verified: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_config(cls, config: Config) -> ClientAuth:
        return cls(
            config.auth_htpasswd, config.auth_tokens_file, config.auth_anonymous, config.access
        )

    @property
    def accepts_logins(self) -> bool:
        """Whether a client can log in at all (an htpasswd or a tokens file)."""
        return bool(self._htpasswd or self._tokens)

    @property
    def active(self) -> bool:
        return bool(self._htpasswd or self._tokens or self.rules or not self.anonymous)

    async def identify(self, authorization: str | None) -> str:
        """The client's name, or raise UNAUTHORIZED (with a challenge)."""
        if not authorization:
            if self.anonymous:
                return ANONYMOUS
            raise Unauthorized("authentication required", headers=CHALLENGE)
        key = hashlib.sha256(authorization.encode()).hexdigest()
        # A login removed from its file stops working within the files' recheck, even
        # for a client remembered as verified (the check is cheap when nothing is due).
        await self._reread()
        known = self._verified.get(key)
        if known is not None and self._clock() - known[1] < REMEMBER:
            return known[0]
        subject = await self._check(authorization)
        if subject is None:
            raise Unauthorized("invalid credentials", headers=CHALLENGE)
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[key] = (subject, self._clock())
        return subject

    async def _check(self, authorization: str) -> str | None:
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and self._htpasswd is not None:
            await self._reread()
            try:
                user, sep, password = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            if not sep:
                return None
            # An unknown user costs one check against a dummy of the same cost: the
            # answer takes as long as for a real user with a wrong password.
            hashed = self._users.get(user)
            matched = await self.passwords.check(password.encode(), hashed or self._dummy)
            return user if matched and hashed is not None else None
        if scheme == "bearer" and self._tokens is not None:
            await self._reread()
            offered = value.strip().encode()
            for token, name in self._token_names:
                if hmac.compare_digest(token, offered):
                    return name
        return None

    async def _reread(self) -> None:
        """Re-read changed files (a stat every few seconds, in a thread)."""
        htpasswd, tokens = self._htpasswd, self._tokens
        if htpasswd is not None and htpasswd.due() and await asyncio.to_thread(htpasswd.refresh):
            self._users = parse_htpasswd(htpasswd.lines)
            self._dummy = dummy_for(list(self._users.values()))
            self._verified.clear()
        if htpasswd is not None and not self._dummy:
            self._dummy = dummy_for([])
        if tokens is not None and tokens.due() and await asyncio.to_thread(tokens.refresh):
            self._token_names = parse_tokens(tokens.lines)
            self._verified.clear()

    async def close(self) -> None:
        """Stop the password checks' executor."""
        await self.passwords.close()

    def check(self, subject: str, upstream: str, repository: str) -> None:
        """DENIED unless a rule for ``subject`` allows ``upstream/repository``."""
        if not self.rules:
            return
        target = f"{upstream}/{repository}"
        for rule in self.rules:
            if not any(fnmatch.fnmatchcase(subject, s) for s in rule.subjects):
                continue
            if any(fnmatch.fnmatchcase(target, p) for p in rule.deny):
                break
            if any(fnmatch.fnmatchcase(target, p) for p in rule.allow):
                return
            break
        if subject == ANONYMOUS and (self._htpasswd or self._tokens):
            # A client holding credentials sends them only when challenged.
            raise Unauthorized(f"log in to pull {target[:300]}", headers=CHALLENGE)
        raise Denied(f"{subject} may not pull {target[:300]}")

    def check_viewer(self, subject: str, targets: Iterable[tuple[str, str]]) -> None:
        """For a view over many repositories (the dashboard): a logged-in client
        allowed to pull every (upstream, repository) in ``targets``.

        Anonymous access exists so that runtimes can pull, not to publish what the
        cache holds. The errors name none of the targets: the names are what is
        protected.
        """
        if subject == ANONYMOUS:
            if self._htpasswd or self._tokens:
                raise Unauthorized("log in to see this", headers=CHALLENGE)
            raise Denied("anonymous clients may not see this")
        for upstream, repository in targets:
            try:
                self.check(subject, upstream, repository)
            except Denied:
                raise Denied(f"{subject} may not pull everything this counts") from None
