"""Pure parts of client authentication: the credential files."""

from __future__ import annotations

from cacheproxy.http.authfiles import parse_htpasswd, parse_tokens
from cacheproxy.http.passwords import bcrypt_check, cost_of, dummy_for

HASH = "$2b$05$" + "a" * 53


def test_tokens_skip_blank_and_comment_lines() -> None:
    lines = ["# header", "", "   ", "  # indented comment", "#tok old", "tok-1 builder", "tok-2"]
    assert parse_tokens(lines) == ((b"tok-1", "builder"), (b"tok-2", "token"))


def test_htpasswd_skips_comments_empty_users_and_other_hashes() -> None:
    lines = [
        "# users",
        f"#old:{HASH}",
        f":{HASH}",
        "md5user:$apr1$abc$def",
        "nocolon",
        f"ci:{HASH}",
        f"ci:{HASH.replace('a', 'b')}",
    ]
    assert parse_htpasswd(lines) == {"ci": HASH.encode()}


def test_the_dummy_hash_takes_the_files_highest_cost_and_matches_nothing() -> None:
    import bcrypt

    hashes = [bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=r)) for r in (4, 5)]
    dummy = dummy_for(hashes)
    assert cost_of(dummy) == 5
    assert not bcrypt_check(b"pw", dummy) and not bcrypt_check(b"", dummy)
    assert cost_of(dummy_for([])) == 12  # no users yet: a usual cost
    assert cost_of(b"not a hash") is None
