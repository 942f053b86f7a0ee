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
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

from ..config import AccessRule as Rule
from ..config import Config
from ..errors import Denied, Unauthorized
from ..singleflight import SingleFlight
from .authfiles import WatchedFile, parse_htpasswd, parse_tokens
from .passwords import PasswordChecks, dummy_for

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
CHALLENGE = {"WWW-Authenticate": 'Basic realm="cacheproxy", charset="UTF-8"'}
# Verified logins remembered at most (the least recently used go first). Only a
# correct password is remembered, so there are about as many as users in the file.
REMEMBERED = 10_000


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
        # MAC of a verified "user:password" -> (user, the hash it matched). A MAC
        # with a key of this process, not a plain hash: memory holds no value that
        # could be tried against a password list.
        self._verified: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()
        self._mac_key = secrets.token_bytes(32)
        # Concurrent logins with the same credentials (a runtime pulling layers in
        # parallel) share one check.
        self._checking: SingleFlight[tuple[bytes, bytes], bool] = SingleFlight()
        self._reading = asyncio.Lock()

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

    async def identify(self, authorization: str | None, client: str = "") -> str:
        """The client's name, or raise UNAUTHORIZED (with a challenge). ``client``:
        its address, whose share of the password checks a new login takes."""
        if not authorization:
            if self.anonymous:
                return ANONYMOUS
            raise Unauthorized("authentication required", headers=CHALLENGE)
        # A login removed from its file stops working within the files' recheck, even
        # for a client remembered as verified (the check is cheap when nothing is due).
        await self._reread()
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        subject = None
        if scheme == "basic" and self._htpasswd is not None:
            subject = await self._basic(value, client)
        elif scheme == "bearer" and self._tokens is not None:
            # No bcrypt here: a constant-time comparison with each token, every time.
            offered = value.strip().encode()
            for token, name in self._token_names:
                if hmac.compare_digest(token, offered) and subject is None:
                    subject = name
        if subject is None:
            raise Unauthorized("invalid credentials", headers=CHALLENGE)
        return subject

    async def _basic(self, value: str, client: str) -> str | None:
        try:
            credentials = base64.b64decode(value.strip())
            user, sep, password = credentials.decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        hashed = self._users.get(user)
        # The user name ends at the first colon: the decoded bytes name one pair.
        key = hmac.new(self._mac_key, credentials, hashlib.sha256).digest()
        # Verified before against the hash the user's line still holds: the same
        # question to bcrypt would get the same answer, so it is not asked again and
        # the client never waits behind strangers' checks. Safe without expiry: the
        # verdict of bcrypt(password, hash) depends on those two alone, and each
        # lookup compares the hash with the file as last read (a changed password,
        # a removed user: a different hash, or none, and the login is checked anew).
        known = self._verified.get(key)
        if known is not None and hashed is not None and known == (user, hashed):
            self._verified.move_to_end(key)
            return user
        # An unknown user costs one check against a dummy of the same cost: the
        # answer takes as long as for a real user with a wrong password.
        target = hashed or self._dummy

        async def check() -> bool:
            return await self.passwords.check(password.encode(), target, client)

        matched = await self._checking.run((key, target), check)
        if not matched or hashed is None:
            return None
        self._verified[key] = (user, hashed)
        self._verified.move_to_end(key)
        while len(self._verified) > REMEMBERED:
            self._verified.popitem(last=False)
        return user

    async def _reread(self) -> None:
        """Re-read changed files (a stat every few seconds, in a thread)."""
        htpasswd, tokens = self._htpasswd, self._tokens
        due = any(f is not None and f.due() for f in (htpasswd, tokens))
        if not due and (htpasswd is None or self._dummy):
            return
        # One reader at a time: a login arriving while the file is being read waits
        # for what it says (the first logins at start would see no users at all).
        async with self._reading:
            await self._refresh(htpasswd, tokens)

    async def _refresh(self, htpasswd: WatchedFile | None, tokens: WatchedFile | None) -> None:
        if htpasswd is not None and htpasswd.due() and await asyncio.to_thread(htpasswd.refresh):
            self._users = parse_htpasswd(htpasswd.lines)
            self._dummy = dummy_for(list(self._users.values()))
            # Forget what the new file no longer vouches for; keep the others (their
            # users' lines are unchanged: a new user must not make everyone wait).
            users = self._users
            for key, (user, hashed) in list(self._verified.items()):
                if users.get(user) != hashed:
                    del self._verified[key]
        if htpasswd is not None and not self._dummy:
            self._dummy = dummy_for([])
        if tokens is not None and tokens.due() and await asyncio.to_thread(tokens.refresh):
            self._token_names = parse_tokens(tokens.lines)

    async def close(self) -> None:
        """Stop the password checks' executor."""
        await self._checking.close()
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
