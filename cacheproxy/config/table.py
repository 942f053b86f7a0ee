"""Every setting, as one table: read from the dataclasses that declare them.

``load.py`` merges by it, ``cli.py`` makes its flags from it and ``docs.py``
writes docs/configuration.md from it.
"""

from __future__ import annotations

from pathlib import Path

from .fields import COMMANDS, ENV_PREFIX, UPSTREAM_COMMANDS, Flag, Setting, settings_of
from .freshness import FreshnessRule
from .model import AccessRule, Config
from .policy import POLICY
from .shared import SHARED
from .upstreams import UpstreamConfig

# The loader's own two: where the file is, and the one-upstream shortcut.
CONFIG_FILE = Setting(
    "config",
    Path,
    "the TOML config file",
    None,
    env=f"{ENV_PREFIX}CONFIG",
    flag=Flag("--config", COMMANDS),
    in_file=False,
)
SHORTCUT = Setting(
    "upstream",
    str,
    "the one upstream registry URL: replaces the presets (refused with [[upstream]] tables)",
    None,
    env=f"{ENV_PREFIX}UPSTREAM",
    flag=Flag("--upstream", UPSTREAM_COMMANDS),
    in_file=False,
    shown="the presets",
)
# Config's own settings: the top level of a file, and its [auth], [metrics] and
# [lifecycle] tables.
SETTINGS = settings_of(Config)
BY_NAME = {s.name: s for s in SETTINGS}
TABLES = tuple(dict.fromkeys(s.table for s in SETTINGS if s.table))
UPSTREAM = settings_of(UpstreamConfig, table="upstream", env_prefix=None)
ACCESS = settings_of(AccessRule, table="access", env_prefix=None)
FRESHNESS = settings_of(FreshnessRule, table="freshness", env_prefix=None)

__all__ = [
    "ACCESS",
    "BY_NAME",
    "CONFIG_FILE",
    "FRESHNESS",
    "POLICY",
    "SETTINGS",
    "SHARED",
    "SHORTCUT",
    "TABLES",
    "UPSTREAM",
    "flags_of",
]


def flags_of(command: str) -> tuple[Setting, ...]:
    """The settings subcommand ``command`` takes flags for, in the order shown."""
    every = (CONFIG_FILE, SHORTCUT, *SETTINGS)
    return tuple(s for s in every if s.flag is not None and command in s.flag.commands)
