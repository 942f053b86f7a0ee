"""Pure parts of client authentication: the credential files."""

from __future__ import annotations

from cacheproxy.http.authfiles import parse_htpasswd, parse_tokens

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
