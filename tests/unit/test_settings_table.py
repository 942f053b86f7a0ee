"""The settings table: every setting read from every source under the names the
table derives, the names that exist today kept, and the docs generated from it."""

from __future__ import annotations

import json
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import pytest

from cacheproxy import cli
from cacheproxy.config import load_config
from cacheproxy.config.docs import COMMAND, render
from cacheproxy.config.fields import COMMANDS, Setting
from cacheproxy.config.table import BY_NAME, CONFIG_FILE, SETTINGS, SHARED, SHORTCUT, flags_of

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

# Values for the settings whose text the checks constrain (str and list settings):
# one consistent configuration (TLS on, so peer URLs are https) unlike the defaults.
SAMPLES: dict[str, Any] = {
    "listen": "127.0.0.9:6000",
    "presets": ("docker.io", "quay.io"),
    "default_upstream": "quay.io",
    "loop": "uvloop",
    "log_level": "DEBUG",
    "max_blob_size": "1GiB",
    "upstream_rate": "50MiB",
    "peer_upload_rate": "25MB",
    "prefetch_rate": "10MiB",
    "ecr_regions": ("us-west-2", "eu-west-1"),
    "segment_min_size": "16MiB",
    "max_size": "10GiB",
    "min_free": ("1GiB", "5%"),
    "keep": ("docker.io/library/*", "ghcr.io/org/app:v*"),
    "peers": ("https://a.example:5001", "https://b.example:5001"),
    "peers_dns": "peers.example:5001",
    "self_url": "https://a.example:5001",
    "peer_listen": "127.0.0.9:6001",
    "peer_tls_name": "cacheproxy-peer",
    "peer_piece_size": "8MiB",
    "metrics_subjects": ("prometheus", "ops"),
    "metrics_listen": "127.0.0.9:6002",
    "egress_deny": ("10.0.0.0/8", "node"),
    # [shared]
    "bucket": "acme-cache",
    "prefix": "team/x",
    "region": "eu-west-1",
    "endpoint_url": "https://minio.example:9000",
    "addressing_style": "path",
    "aws_profile": "cache",
    "aws_role_arn": "arn:aws:iam::123456789012:role/cache",
    "redirect_profile": "reader",
    "redirect_role_arn": "arn:aws:iam::123456789012:role/reader",
    "price": "minio",
    "network_path": "cross-region",
}
# On the command line there is no TLS flag: the peer listener is plain.
PLAIN = {
    "peers": ("http://a.example:5001", "http://b.example:5001"),
    "self_url": "http://a.example:5001",
}

# Every environment name the README's settings table or a test named before the
# table existed, and every flag of every subcommand: none renamed, none dropped.
KNOWN_ENV = [
    "CACHE_DIR",
    "CLIENT_HEADER_TIMEOUT",
    "CONFIG",
    "CONNECT_TIMEOUT",
    "DEFAULT_UPSTREAM",
    "ECR_REGIONS",
    "EGRESS_DENY",
    "EXPOSE_CREDENTIALS",
    "KEEPALIVE_TIMEOUT",
    "LINK_TTL",
    "LISTEN",
    "LOG_LEVEL",
    "LOOP",
    "MAX_BLOB_SIZE",
    "MAX_CONNECTIONS",
    "MAX_DYNAMIC_UPSTREAMS",
    "MAX_FILLS",
    "MAX_QUEUED_FILLS",
    "MAX_FILLS_PER_CLIENT",
    "MAX_PEER_CONNECTIONS",
    "MAX_SIZE",
    "MAX_STALE",
    "METRICS_LISTEN",
    "METRICS_LOOPBACK",
    "METRICS_SUBJECTS",
    "MIN_FREE",
    "PEER_CA_FILE",
    "PEER_LISTEN",
    "PEER_TLS_CERT",
    "PEER_TLS_KEY",
    "PEER_TLS_NAME",
    "PRESETS",
    "PRICING_FILE",
    "READ_TIMEOUT",
    "SAVINGS_FLUSH_INTERVAL",
    "SEGMENT_MIN_SIZE",
    "SELF_URL",
    "SEND_TIMEOUT",
    "SHARED_BUCKET",
    "SHARED_PREFIX",
    "SHARED_REDIRECT_ROLE_ARN",
    "SHUTDOWN_TIMEOUT",
    "TAG_TTL",
    "TLS_CERT",
    "TLS_KEY",
    "UPSTREAM",
    "UPSTREAM_SEGMENTS",
]
KNOWN_FLAGS = {
    "serve": "--config --upstream --cache-dir --listen --tag-ttl --loop --offline --max-size"
    " --log-level --peer --peers-dns --peers-file --self --peer-listen --metrics-listen"
    " --no-peer-holders --peer-secret-file",
    "report": "--config --cache-dir --upstream --pricing-file --since --until --top --json --csv",
    "peers": "--config --url --key --json",
    "refresh": "--config --url",
    "client-config": "--config --upstream --mirror --out",
    "node": "--config --upstream --runtime --root --mirror --dry-run --with --binary --skip",
    "gc": "--config --cache-dir --upstream --dry-run --shared",
    "ls": "--config --cache-dir --upstream --json",
    "verify": "--config --cache-dir --upstream",
    "prefetch": "--config --cache-dir --upstream -f --file --no-referrers --platform"
    " --cluster --copies --url",
    "export": "--config --cache-dir --upstream -f --file --no-referrers -o --output",
    "import": "--config --cache-dir --upstream --no-referrers",
}
# What each subcommand needs besides its flags to parse.
POSITIONAL = {
    "client-config": ["docker"],
    "node": ["check", "--runtime", "containerd"],
    "export": ["-o", "/b.tar"],
    "import": ["/b.tar"],
    "refresh": ["docker.io/library/alpine:3"],
}


def sample(s: Setting) -> Any:
    """A value of ``s`` unlike its default, as the loaded Config holds it."""
    if s.name in SAMPLES:
        return SAMPLES[s.name]
    default = None if s.default is MISSING else s.default
    if s.kind is bool:
        return not default
    if s.kind == "size":
        assert isinstance(default, int)
        return default + MIB
    if s.kind in (int, float):
        return (default or 0) + (1 if s.kind is int else 1.5)
    if s.kind is Path:
        return Path(f"/srv/sample/{s.name}")
    raise AssertionError(f"{s.name}: give tests/unit/test_settings_table.py a sample value")


def as_text(s: Setting, value: Any) -> str:
    """``value`` as the environment (or a flag) writes it."""
    if s.kind is bool:
        return "true" if value else "false"
    if s.kind == "size":
        return f"{value // MIB}MiB"
    return ",".join(value) if isinstance(value, tuple) else str(value)


def as_toml(s: Setting, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if s.kind == "size":
        return json.dumps(as_text(s, value))
    return json.dumps(list(value) if isinstance(value, tuple) else str(value))


def assert_holds(config: object, settings: tuple[Setting, ...], values: dict[str, Any]) -> None:
    for s in settings:
        assert getattr(config, s.name) == values.get(s.name, sample(s)), s.name


def test_every_setting_from_its_environment_variable() -> None:
    env = {s.env: as_text(s, sample(s)) for s in (*SETTINGS, *SHARED) if s.env}
    config = load_config(env=env)
    assert_holds(config, SETTINGS, {})
    assert config.shared is not None
    assert_holds(config.shared, SHARED, {})


def test_every_setting_from_its_toml_spelling(tmp_path: Path) -> None:
    tables: dict[str | None, list[str]] = {}
    for s in (*SETTINGS, *SHARED):
        tables.setdefault(s.table, []).append(f"{s.key} = {as_toml(s, sample(s))}")
    top = tables.pop(None)
    file = tmp_path / "all.toml"
    sections = [f"[{table}]\n" + "\n".join(lines) for table, lines in tables.items()]
    file.write_text("\n".join(top) + "\n" + "\n".join(sections) + "\n")
    config = load_config(file=file, env={})
    assert_holds(config, SETTINGS, {})
    assert config.shared is not None
    assert_holds(config.shared, SHARED, {})


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_of_every_command(command: str, tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("max_stale = 123\n")
    argv = [command, *POSITIONAL.get(command, [])]
    for s in flags_of(command):
        assert s.flag is not None
        if s is CONFIG_FILE:
            argv += [s.flag.option, str(file)]
        elif s is SHORTCUT:
            argv += [s.flag.option, "http://127.0.0.9:5100"]
        elif s.kind is bool:
            assert sample(s) is (not s.flag.option.startswith("--no-")), s.name
            argv.append(s.flag.option)
        elif s.kind is tuple:
            for item in PLAIN.get(s.name, sample(s)):
                argv += [s.flag.option, item]
        else:
            argv += [s.flag.option, as_text(s, PLAIN.get(s.name, sample(s)))]
    config = cli.load(cli.parser().parse_args(argv), env={})
    assert config.max_stale == 123, "--config names the file read"
    if any(s is SHORTCUT for s in flags_of(command)):
        assert config.upstream().url == "http://127.0.0.9:5100"
    assert_holds(config, tuple(s for s in flags_of(command) if s.name in BY_NAME), PLAIN)


def test_the_loaders_own_settings_from_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("max_stale = 123\n")
    assert CONFIG_FILE.env and SHORTCUT.env
    config = load_config(env={CONFIG_FILE.env: str(file), SHORTCUT.env: "http://127.0.0.9:5100"})
    assert (config.max_stale, config.upstream().url) == (123, "http://127.0.0.9:5100")


def test_the_names_that_exist_stay() -> None:
    envs = {s.env for s in (CONFIG_FILE, SHORTCUT, *SETTINGS, *SHARED)}
    assert {f"CACHEPROXY_{name}" for name in KNOWN_ENV} <= envs
    subcommands = cli.parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(subcommands) == list(KNOWN_FLAGS)
    for command, flags in KNOWN_FLAGS.items():
        options = [o for a in subcommands[command]._actions for o in a.option_strings]
        assert sorted(set(options) - {"-h", "--help"}) == sorted(flags.split()), command


def test_the_configuration_docs_are_generated_from_the_table() -> None:
    on_disk = (ROOT / "docs/configuration.md").read_text()
    assert on_disk == render(), f"docs/configuration.md is out of date: run {COMMAND}"
    for s in (*SETTINGS, *SHARED):
        assert f"| {s.name} | `{s.toml}` |" in on_disk
