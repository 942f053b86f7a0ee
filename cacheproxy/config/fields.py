"""A setting declared once: a dataclass field and its metadata.

The field gives the name, the default and (from its annotation) the type; its
metadata (:func:`setting`, :func:`about`) gives the doc line, the command-line flag,
the TOML table it is written in, and a kind where the type does not say it ("size").
:func:`settings_of` reads a dataclass's fields into :class:`Setting` records, from
which the loader, the command line and docs/configuration.md are all derived.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..sizes import parse_size

ENV_PREFIX = "CACHEPROXY_"

# Which subcommands take a setting's flag: serve alone, unless a setting says more.
SERVE = ("serve",)
# The commands that open the cache directory.
CACHE_COMMANDS = ("serve", "report", "gc", "ls", "verify", "prefetch", "export", "import")
# The commands that reach upstreams (every one but peers, which asks a running node).
UPSTREAM_COMMANDS = (*CACHE_COMMANDS, "client-config", "node")
COMMANDS = (*UPSTREAM_COMMANDS, "peers", "refresh")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class Flag:
    """A setting's command-line flag and the subcommands that take it."""

    option: str
    commands: tuple[str, ...] = SERVE
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Setting:
    """One setting as every source spells it.

    ``kind`` is how a value from text is read: str, int, float, bool, Path, tuple (a
    list of strings; comma-separated in the environment) or "size" (bytes, or text
    such as "64MiB", kept as bytes). ``default`` is MISSING for a required setting
    or one whose default is computed (``shown`` then says what it is).
    """

    name: str
    kind: type | str
    doc: str
    default: object = MISSING
    env: str | None = None
    flag: Flag | None = None
    # The TOML table it is written in ("metrics": ``[metrics] listen``); None: the top
    # level. ``in_file``: False for what only the environment and flags give.
    table: str | None = None
    in_file: bool = True
    shown: str | None = None

    @property
    def key(self) -> str:
        """Its key in its TOML table (``listen`` for metrics_listen in [metrics])."""
        return self.name.removeprefix(f"{self.table}_") if self.table else self.name

    @property
    def toml(self) -> str:
        """How a TOML file spells it: ``tag_ttl``, ``[metrics] listen``."""
        return f"[{self.table}] {self.key}" if self.table else self.key

    @property
    def default_text(self) -> str:
        """The default as a person writes it: ``10GiB,20%``, ``true``, ``604800``."""
        value = self.default
        if self.shown is not None:
            return self.shown
        if value is MISSING:
            return "required"
        if value is None or value == ():
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        if self.kind == "size" and isinstance(value, int) and value % 2**20 == 0:
            return f"{value // 2**20}MiB"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)


def about(
    doc: str,
    *,
    flag: str | None = None,
    commands: tuple[str, ...] = SERVE,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    kind: str | None = None,
    table: str | None = None,
    shown: str | None = None,
    tables: bool = False,
) -> dict[str, Any]:
    """A setting's field metadata: its doc line, its flag (and the subcommands that
    take it), its kind where the type does not say it, its TOML table, the default
    as the docs show it; ``tables``: a field filled from TOML tables of its own."""
    return {
        "doc": doc,
        "flag": Flag(flag, commands, metavar, choices) if flag else None,
        "kind": kind,
        "table": table,
        "shown": shown,
        "tables": tables,
    }


def setting(default: T, doc: str, **meta: Any) -> T:
    """A setting's field with a plain ``default`` (``meta`` as for :func:`about`)."""
    return field(default=default, metadata=about(doc, **meta))


def settings_of(
    cls: type, *, table: str | None = None, env_prefix: str | None = ENV_PREFIX
) -> tuple[Setting, ...]:
    """The settings of dataclass ``cls``, in declaration order (fields filled from
    tables of their own left out). ``table``: the TOML table all of them are in;
    ``env_prefix``: their environment names' prefix (None: not read from it)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "doc" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with setting() or about()")
        if meta["tables"]:
            continue
        if f.default is MISSING and f.default_factory is not MISSING and not meta["shown"]:
            raise TypeError(f"{cls.__name__}.{f.name}: a computed default needs shown=")
        out.append(
            Setting(
                name=f.name,
                kind=meta["kind"] or _kind(f.name, hints[f.name]),
                doc=meta["doc"],
                default=f.default,
                env=f"{env_prefix}{f.name.upper()}" if env_prefix else None,
                flag=meta["flag"],
                table=meta["table"] or table,
                shown=meta["shown"],
            )
        )
    return tuple(out)


def _kind(name: str, hint: Any) -> type:
    """How a value of annotation ``hint`` is read from text (``X | None`` as X)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            hint = args[0]
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        return tuple
    if hint in (str, int, float, bool, Path):
        return typing.cast(type, hint)
    raise TypeError(f"setting {name}: no reading for {hint!r}")


def coerce(key: str, raw: Any, kind: type | str) -> Any:
    """``raw`` (from TOML, the environment or a flag) as setting ``key`` of type ``kind``
    (a type, or "size": bytes or "64MiB"); raises ConfigError naming the setting."""
    if kind == "size":
        try:
            return raw if isinstance(raw, int) else parse_size(str(raw), 0)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    assert isinstance(kind, type)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is tuple:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind is Path:
            return Path(str(raw)).expanduser()
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot use {raw!r} as {kind.__name__}") from exc
