"""A small TOML writer for the files ``node install`` merges (TOML 1.0).

The standard library reads TOML (tomllib) but does not write it. The documents
written here are ones tomllib read (a runtime's file, merged with the mirror's
entries), so the writer covers what tomllib returns: tables, arrays (of tables
too), strings, booleans, integers, floats and dates. It writes every value so that
``tomllib.loads(dumps(doc)) == doc``; comments and layout of the original are not
kept (the original itself is kept in the backup that ``node uninstall`` restores).
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dumps(doc: Mapping[str, Any], header: str = "") -> str:
    """``doc`` as TOML text; ``header`` (comment lines without '#') goes first."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _table(lines, [], doc)
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines) + "\n"


def key(name: str) -> str:
    """A key, bare when TOML allows it, else a basic string (TOML 1.0, "Keys")."""
    return name if _BARE_KEY.fullmatch(name) else string(name)


def string(value: str) -> str:
    """A TOML basic string. JSON escapes are TOML's (\\" \\\\ \\b \\f \\n \\r \\t \\uXXXX)
    but for two: JSON leaves DEL as it is, and writes a character outside the BMP as
    a surrogate pair, which TOML refuses; non-ASCII text is written as UTF-8."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(lines: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    inline = [(k, v) for k, v in table.items() if not _is_table(v) and not _is_table_array(v)]
    nested = [(k, v) for k, v in table.items() if _is_table(v) or _is_table_array(v)]
    # A table's header is needed for its own keys, or to define it when empty; one
    # holding only tables is defined by theirs.
    if path and (inline or not nested):
        lines += ["", f"[{'.'.join(key(p) for p in path)}]"]
    lines += [f"{key(k)} = {value(v)}" for k, v in inline]
    for name, sub in nested:
        if _is_table(sub):
            _table(lines, [*path, name], sub)
            continue
        for item in sub:
            lines += ["", f"[[{'.'.join(key(p) for p in [*path, name])}]]"]
            _table_body(lines, [*path, name], item)


def _table_body(lines: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    """An element of an array of tables: its keys under the [[header]] just written."""
    inline = [(k, v) for k, v in table.items() if not _is_table(v) and not _is_table_array(v)]
    lines += [f"{key(k)} = {value(v)}" for k, v in inline]
    for name, sub in table.items():
        if _is_table(sub) or _is_table_array(sub):
            # Sub-tables of an array element are written inline: a dotted header
            # would name the array's last element only if it came right after it.
            lines.append(f"{key(name)} = {value(sub)}")


def value(v: object) -> str:
    """One value as TOML (inline tables for tables inside arrays)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return string(v)
    if isinstance(v, datetime.date | datetime.time):
        return v.isoformat()
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, Sequence):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"TOML has no value for {type(v).__name__}")
