from __future__ import annotations

from pathlib import Path

import pytest

from cacheproxy.config import DOCKER_HUB, ConfigError, load_config


def test_defaults() -> None:
    config = load_config(env={"HOME": "/home/u"})
    assert config.listen == "0.0.0.0:5000"
    assert config.port == 5000
    assert config.upstream().url == "https://registry-1.docker.io"
    assert config.default_upstream == DOCKER_HUB


def test_precedence(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(
        'listen = "127.0.0.1:6000"\ntag_ttl = 5\ncache_dir = "/from/file"\n'
        '[[upstream]]\nname = "reg.example"\nurl = "https://reg.example"\n'
        'username = "u"\npassword = "secret"\n'
    )
    config = load_config(
        file=file,
        env={"CACHEPROXY_TAG_TTL": "7", "CACHEPROXY_CACHE_DIR": "/from/env"},
        flags={"cache_dir": Path("/from/flag"), "listen": None},
    )
    assert config.listen == "127.0.0.1:6000"  # file (flag was None: not given)
    assert config.tag_ttl == 7.0  # env beats file
    assert config.cache_dir == Path("/from/flag")  # flag beats env
    up = config.upstream()
    assert (up.name, up.username, up.password) == ("reg.example", "u", "secret")
    assert "secret" not in repr(config)


def test_upstream_shortcut() -> None:
    config = load_config(env={}, flags={"upstream": "http://127.0.0.1:5100"})
    assert config.upstream().name == "127.0.0.1:5100"
    assert config.upstream().url == "http://127.0.0.1:5100"


@pytest.mark.parametrize(
    ("env", "flags", "text"),
    [
        ({}, {"listen": "nope"}, "listen"),
        ({"CACHEPROXY_TAG_TTL": "soon"}, {}, "tag_ttl"),
        ({}, {"upstream": "ftp://x"}, "upstream"),
        ({}, {"loop": "trio"}, "loop"),
    ],
)
def test_bad_settings(env: dict[str, str], flags: dict[str, object], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        load_config(env=env, flags=flags)


def test_bad_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("nonsense = 1\n")
    with pytest.raises(ConfigError, match="nonsense"):
        load_config(file=file, env={})
    file.write_text("[[[")
    with pytest.raises(ConfigError):
        load_config(file=file, env={})
