"""ClientAuth: who a client is (htpasswd, tokens), and what its rules let it pull."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import bcrypt
import pytest

from cacheproxy.config import AccessRule
from cacheproxy.errors import Denied, Unauthorized
from cacheproxy.http.authfiles import RECHECK
from cacheproxy.http.clientauth import ANONYMOUS, ClientAuth
from cacheproxy.http.operator import OperatorAccess
from tests.support.clock import Clock
from tests.support.images import basic_credentials


def htpasswd_line(user: str, password: str, prefix: str = "$2b$") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{prefix}{hashed[4:]}"


# --- rules ----------------------------------------------------------------------------


def test_without_rules_everyone_may_pull_everything() -> None:
    ClientAuth().check(ANONYMOUS, "docker.io", "library/alpine")


def test_the_first_rule_whose_subjects_match_decides() -> None:
    auth = ClientAuth(
        rules=(
            AccessRule(subjects=("ci-*",), allow=("docker.io/team/*",)),
            AccessRule(subjects=("*",), allow=("*",)),
        )
    )
    auth.check("ci-runner", "docker.io", "team/app")
    # The first rule matched ci-runner and does not allow this: the catch-all after
    # it is never asked.
    with pytest.raises(Denied):
        auth.check("ci-runner", "docker.io", "library/alpine")
    auth.check("alice", "docker.io", "library/alpine")


def test_deny_beats_allow_within_a_rule() -> None:
    auth = ClientAuth(
        rules=(AccessRule(subjects=("*",), allow=("docker.io/*",), deny=("docker.io/secret/*",)),)
    )
    auth.check("alice", "docker.io", "team/app")
    with pytest.raises(Denied):
        auth.check("alice", "docker.io", "secret/keys")
    with pytest.raises(Denied):
        auth.check("alice", "ghcr.io", "team/app")


def test_a_client_no_rule_names_is_denied() -> None:
    auth = ClientAuth(rules=(AccessRule(subjects=("alice",)),))
    auth.check("alice", "docker.io", "anything")
    with pytest.raises(Denied):
        auth.check("bob", "docker.io", "anything")


def test_anonymous_is_challenged_where_credentials_exist(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-1 alice\n")
    rules = (AccessRule(subjects=("alice",)),)
    # A client holding credentials sends them only when challenged: 401, not 403.
    with pytest.raises(Unauthorized) as caught:
        ClientAuth(tokens_file=tokens, rules=rules).check(ANONYMOUS, "docker.io", "app")
    assert caught.value.headers["WWW-Authenticate"].startswith("Basic realm=")
    # With no way to log in, there is nothing to challenge for.
    with pytest.raises(Denied):
        ClientAuth(rules=rules).check(ANONYMOUS, "docker.io", "app")


# --- identity -------------------------------------------------------------------------


async def test_anonymous_pulls_unless_turned_off() -> None:
    assert await ClientAuth().identify(None) == ANONYMOUS
    with pytest.raises(Unauthorized) as caught:
        await ClientAuth(anonymous=False).identify(None)
    assert "WWW-Authenticate" in caught.value.headers


@pytest.mark.parametrize("prefix", ["$2b$", "$2y$", "$2a$"])
async def test_htpasswd_bcrypt_logins(tmp_path: Path, prefix: str) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(
        "\n".join(
            [
                htpasswd_line("alice", "wonderland", prefix),
                # Hashes other than bcrypt are never accepted (distribution's rule too).
                "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
                "carol:plaintext",
            ]
        )
        + "\n"
    )
    auth = ClientAuth(htpasswd=htpasswd)
    assert await auth.identify(basic_credentials("alice", "wonderland")) == "alice"
    for wrong in [
        basic_credentials("alice", "looking-glass"),
        basic_credentials("mallory", "wonderland"),
        basic_credentials("bob", "password"),
        basic_credentials("carol", "plaintext"),
        "Basic !!not-base64!!",
        "Basic " + base64.b64encode(b"no colon").decode(),
        "Bearer some-token",  # no tokens file
    ]:
        with pytest.raises(Unauthorized):
            await auth.identify(wrong)


async def test_tokens_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-ci ci-runner\n\ntok-bare\n")
    auth = ClientAuth(tokens_file=tokens)
    assert await auth.identify("Bearer tok-ci") == "ci-runner"
    assert await auth.identify("bearer  tok-bare ") == "token"
    for wrong in ["Bearer tok", "Bearer tok-ci-2", basic_credentials("ci-runner", "tok-ci")]:
        with pytest.raises(Unauthorized):
            await auth.identify(wrong)


async def test_a_changed_file_is_read_again_and_forgets_old_logins(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-old alice\n")
    clock = Clock()
    auth = ClientAuth(tokens_file=tokens, clock=clock)
    assert await auth.identify("Bearer tok-old") == "alice"
    tokens.write_text("tok-new alice\n")
    os.utime(tokens, (1, 1))  # a different mtime, whatever the file system's resolution
    # Within the recheck interval the file is not looked at, and a verified
    # Authorization value is remembered.
    clock.now += RECHECK / 2
    assert await auth.identify("Bearer tok-old") == "alice"
    with pytest.raises(Unauthorized):
        await auth.identify("Bearer tok-new")
    # Past it, the new file counts and what the old one allowed is forgotten.
    clock.now += RECHECK
    assert await auth.identify("Bearer tok-new") == "alice"
    with pytest.raises(Unauthorized):
        await auth.identify("Bearer tok-old")


def counted(auth: ClientAuth) -> list[bytes]:
    """The hashes bcrypt is asked about from now on."""
    asked: list[bytes] = []
    real = auth.passwords.checker

    def checker(password: bytes, hashed: bytes) -> bool:
        asked.append(hashed)
        return real(password, hashed)

    auth.passwords.checker = checker
    return asked


async def test_a_verified_login_is_kept_while_its_line_in_the_file_is(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", "wonderland") + "\n")
    clock = Clock()
    auth = ClientAuth(htpasswd=htpasswd, clock=clock)
    asked = counted(auth)
    assert await auth.identify(basic_credentials("alice", "wonderland")) == "alice"
    assert len(asked) == 1
    # However long after: no bcrypt again (the same question, the same answer).
    clock.now += 3600
    assert await auth.identify(basic_credentials("alice", "wonderland")) == "alice"
    # The file goes away: the last good copy of it still counts.
    htpasswd.unlink()
    clock.now += RECHECK * 2
    assert await auth.identify(basic_credentials("alice", "wonderland")) == "alice"
    # Another user is added: alice's line is unchanged, she is still not checked.
    alice_line = htpasswd_line("alice", "wonderland")
    htpasswd.write_text(f"{alice_line}\n{htpasswd_line('bob', 'builder')}\n")
    clock.now += RECHECK * 2
    assert await auth.identify(basic_credentials("bob", "builder")) == "bob"
    assert len(asked) == 2
    # Her password changes: the old one is checked again, and refused.
    htpasswd.write_text(htpasswd_line("alice", "looking-glass") + "\n")
    os.utime(htpasswd, (2, 2))
    clock.now += RECHECK * 2
    with pytest.raises(Unauthorized):
        await auth.identify(basic_credentials("alice", "wonderland"))
    assert len(asked) == 3
    assert await auth.identify(basic_credentials("alice", "looking-glass")) == "alice"
    with pytest.raises(Unauthorized):
        await auth.identify(basic_credentials("bob", "builder"))  # gone from the file


async def test_logins_with_the_same_credentials_at_once_share_one_check(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", "wonderland") + "\n")
    auth = ClientAuth(htpasswd=htpasswd)
    asked = counted(auth)
    names = await asyncio.gather(
        *(auth.identify(basic_credentials("alice", "wonderland"), "10.0.0.1") for _ in range(10))
    )
    assert names == ["alice"] * 10
    assert len(asked) == 1
    # Non-canonical base64 of the same credentials is the same login.
    value = basic_credentials("alice", "wonderland")
    assert await auth.identify(value[:10] + "\n" + value[10:]) == "alice"
    assert len(asked) == 1
    await auth.close()


def test_active_only_when_something_is_configured(tmp_path: Path) -> None:
    assert not ClientAuth().active
    assert ClientAuth(anonymous=False).active
    assert ClientAuth(rules=(AccessRule(subjects=("*",)),)).active
    assert ClientAuth(tokens_file=tmp_path / "tokens").active


# --- the operator's views (/metrics, the cluster view) --------------------------------


def test_only_loopback_addresses_read_the_operators_views_without_a_login() -> None:
    rule = OperatorAccess()
    for local in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "localhost"):
        assert rule.admits_address(local), local
    for remote in ("10.0.0.5", "192.168.1.20", "::ffff:10.0.0.5", "fe80::1%eth0", "", None):
        assert not rule.admits_address(remote), remote
    # Switched off, nobody is admitted by address, loopback included.
    assert not OperatorAccess(loopback=False).admits_address("127.0.0.1")


def test_the_operators_views_admit_only_the_subjects_named() -> None:
    assert not OperatorAccess().admits_subject("alice")
    assert not OperatorAccess().admits_subject(ANONYMOUS)
    named = OperatorAccess(subjects=("prometheus", "ops-*"))
    assert named.admits_subject("prometheus") and named.admits_subject("ops-oncall")
    assert not named.admits_subject("alice") and not named.admits_subject(ANONYMOUS)
