"""docs/configuration.md, written from the settings table (``table.py``).

Regenerate it after changing a setting's declaration::

    python3 -m cacheproxy.config.docs > docs/configuration.md

tests/unit/test_settings_table.py fails while the file differs from what this writes.
"""

from __future__ import annotations

from collections.abc import Iterable

from .fields import COMMANDS, SERVE, Setting
from .table import (
    ACCESS,
    CONFIG_FILE,
    FRESHNESS,
    POLICY,
    SETTINGS,
    SHARED,
    SHORTCUT,
    UPSTREAM,
)

COMMAND = "python3 -m cacheproxy.config.docs > docs/configuration.md"

_HEAD = f"""# Configuration

<!-- Generated from the settings' declarations (cacheproxy/config/model.py,
shared.py, upstreams.py): edit those, then run `{COMMAND}`. -->

Every setting, as each source spells it. Precedence, lowest first: the built-in
defaults, the TOML file (`--config FILE` or `CACHEPROXY_CONFIG`), the environment
(`CACHEPROXY_<SETTING>`, `CACHEPROXY_SHARED_<KEY>` for the shared tier), the
command-line flags.

Values from the environment are text: a list is comma-separated
(`CACHEPROXY_MIN_FREE=10GiB,20%`), a switch is `1`, `true`, `yes`, `on` or `0`,
`false`, `no`, `off`, and a path may start with `~`. A list flag is repeated
(`--peer URL --peer URL`). Sizes are bytes or text such as `8MiB` or `50GB`; where a
setting says so, a share of the disk (`80%`). Times are in seconds.

A setting of the `[auth]`, `[metrics]` and `[lifecycle]` tables is written in its
table (`[metrics]` then `listen = ...`); its environment name keeps the prefix
(`CACHEPROXY_METRICS_LISTEN`).

What the settings do together is in the topic's own page: upstreams and logins in
[upstreams.md](upstreams.md), peers in [cluster.md](cluster.md), the shared tier in
[shared.md](shared.md), access, TLS and every bound in [security.md](security.md),
prices in [savings.md](savings.md), the cache's lifecycle and tag freshness in
[operations.md](operations.md).
"""

_SHARED = """## `[shared]`: the shared tier

An S3 bucket (or an S3-compatible store) that many proxies read blobs and manifests
from by digest. On when the file has a `[shared]` table or the environment sets
`CACHEPROXY_SHARED_BUCKET`. How it works: [shared.md](shared.md).
"""

_UPSTREAM = """## `[[upstream]]`: one registry each

Read from the file only (`--upstream URL` stands for one table with just a url; a
login written into that URL becomes the table's username and password). Without
any, the presets serve. Examples, logins and ECR: [upstreams.md](upstreams.md).
"""

_ACCESS = """## `[[access]]`: who may pull what

For the clients matching `subjects`, `deny` beats `allow`. Patterns are fnmatch
globs over client names (htpasswd user, token name, or `anonymous`) and over
`upstream/repository`. Read from the file only. With `[auth]`:
[security.md](security.md#client-logins-and-rules).
"""


_FRESHNESS = """## `[[freshness]]`: how fresh a tag must be

Per (upstream, repository, tag), first match wins; a tag no rule matches, and a key
a rule leaves out, takes `tag_ttl` and `max_stale`, stale on 429, 5xx and offline.
Durations are seconds or `30s`, `5m`, `2h`, `7d`. Read from the file only. What a
stale tag looks like, and refresh on demand:
[operations.md](operations.md#tag-freshness-how-fresh-what-survives-a-404-and-refresh-on-demand).
"""

_POLICY = """## `[[policy]]`: signatures required

A manifest served under a repository one of `repositories` matches (globs over
`upstream/repository`, as for `[[access]]`) needs a cosign signature, by one of
`keys`, whose payload names its digest ([policy.md](policy.md)). Every policy
that matches holds. Read from the file only; the key files are read at the start
and again when they change (checked every few seconds).
"""


def render() -> str:
    """docs/configuration.md as the settings declare it."""
    top = (CONFIG_FILE, SHORTCUT, *SETTINGS)
    parts = [
        _HEAD,
        "## Settings\n",
        _table(("setting", "TOML", "flag", "env", "default", "what it is"), map(_top_row, top)),
        _SHARED,
        _table(("setting", "TOML", "env", "default", "what it is"), map(_shared_row, SHARED)),
        _UPSTREAM,
        _table(("key", "default", "what it is"), map(_key_row, UPSTREAM)),
        _ACCESS,
        _table(("key", "default", "what it is"), map(_key_row, ACCESS)),
        _FRESHNESS,
        _table(("key", "default", "what it is"), map(_key_row, FRESHNESS)),
        _POLICY,
        _table(("key", "default", "what it is"), map(_key_row, POLICY)),
    ]
    return "\n".join(parts)


def _top_row(s: Setting) -> tuple[str, ...]:
    return (s.name, _code(s.toml) if s.in_file else "", _flag(s), _code(s.env), *_tail(s))


def _shared_row(s: Setting) -> tuple[str, ...]:
    return (s.name, _code(s.toml), _code(s.env), *_tail(s))


def _key_row(s: Setting) -> tuple[str, ...]:
    return (s.key, *_tail(s))


def _tail(s: Setting) -> tuple[str, str]:
    """The default (a value as code, words as words) and the doc line."""
    text = s.default_text
    worded = s.shown is not None or text in ("none", "required")
    return (_prose(text) if worded else _code(text), _prose(s.doc))


def _prose(text: str) -> str:
    """``text`` for a Markdown cell: <, > outside `code` written as entities."""
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):
        pieces[i] = pieces[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(pieces)


def _flag(s: Setting) -> str:
    if s.flag is None:
        return ""
    commands = s.flag.commands
    if commands == SERVE:
        return _code(s.flag.option)
    where = "every command" if set(commands) == set(COMMANDS) else ", ".join(commands)
    return f"{_code(s.flag.option)} ({where})"


def _code(text: str | None) -> str:
    return f"`{text}`" if text else ""


def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> str:
    lines = [header, tuple("---" for _ in header), *rows]
    return "".join(f"| {' | '.join(cells)} |\n" for cells in lines)


if __name__ == "__main__":
    print(render(), end="")
