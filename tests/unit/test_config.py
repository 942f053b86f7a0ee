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
        'username = "u"\npassword = "pw-value-123"\n'
    )
    config = load_config(
        file=file,
        env={"CACHEPROXY_TAG_TTL": "7", "CACHEPROXY_CACHE_DIR": "/from/env"},
        flags={"cache_dir": Path("/from/flag"), "listen": None},
    )
    assert config.listen == "127.0.0.1:6000"  # file (flag was None: not given)
    assert config.tag_ttl == 7.0  # env beats file
    assert config.cache_dir == Path("/from/flag")  # flag beats env
    up = config.upstream("reg.example")
    assert (up.name, up.username, up.password) == ("reg.example", "u", "pw-value-123")
    assert config.default_upstream == DOCKER_HUB  # the preset stays the default
    assert "pw-value-123" not in repr(config)


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
        ({"CACHEPROXY_MAX_BLOB_SIZE": "lots"}, {}, "max_blob_size"),
        ({}, {"max_blob_size": "50%"}, "max_blob_size"),
        ({}, {"upstream_segments": 0}, "upstream_segments"),
        ({"CACHEPROXY_UPSTREAM_SEGMENTS": "65"}, {}, "upstream_segments"),
        ({"CACHEPROXY_SEGMENT_MIN_SIZE": "0"}, {}, "segment_min_size"),
        ({}, {"segment_min_size": "10%"}, "segment_min_size"),
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


def test_presets_and_denied_hosts(tmp_path: Path) -> None:
    config = load_config(env={})
    assert config.upstream("ghcr.io").url == "https://ghcr.io"
    assert config.upstream("registry-1.docker.io").name == DOCKER_HUB
    assert config.upstream("index.docker.io").name == DOCKER_HUB
    for host in ["evil.example.com", "123456789012.dkr.ecr.us-west-2.amazonaws.com"]:
        with pytest.raises(KeyError):
            config.upstream(host)
    ecr = load_config(env={"CACHEPROXY_PRESETS": "docker.io,ecr"}).upstream(
        "123456789012.dkr.ecr.eu-central-1.amazonaws.com"
    )
    assert (ecr.ecr, ecr.region) == (True, "eu-central-1")
    with pytest.raises(ConfigError, match="presets"):
        load_config(env={"CACHEPROXY_PRESETS": "nope.io"})


def test_upstream_tables(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(
        "presets = []\n"
        '[[upstream]]\nname = "registry.example.com"\nusername = "robot"\n'
        'password_file = "/run/secrets/registry"\n'
        '[[upstream]]\nname = "123456789012.dkr.ecr.us-west-2.amazonaws.com"\necr = true\n'
        'aws_profile = "prod"\n'
    )
    config = load_config(file=file, env={})
    first = config.upstream()
    assert first.name == "registry.example.com"  # no Docker Hub: the first is the default
    assert first.url == "https://registry.example.com"
    assert str(first.password_file) == "/run/secrets/registry"
    ecr = config.upstream("123456789012.dkr.ecr.us-west-2.amazonaws.com")
    assert (ecr.ecr, ecr.region, ecr.aws_profile) == (True, "us-west-2", "prod")
    with pytest.raises(KeyError):
        config.upstream("docker.io")
    file.write_text('[[upstream]]\nname = "x.example"\necr = "yes"\n')
    with pytest.raises(ConfigError, match="ecr"):
        load_config(file=file, env={})


def test_upstream_shortcut_refuses_a_file_with_upstream_tables(tmp_path: Path) -> None:
    # Tried as a new user would: two upstreams with a login in the file, plus --upstream.
    file = tmp_path / "c.toml"
    file.write_text(
        '[[upstream]]\nname = "a.example"\nusername = "u"\npassword = "pw"\n'
        '[[upstream]]\nname = "b.example"\n'
    )
    with pytest.raises(ConfigError, match=r"declares 2 \[\[upstream\]\]"):
        load_config(file=file, env={}, flags={"upstream": "http://127.0.0.1:5100"})
    with pytest.raises(ConfigError, match="use one or the other"):
        load_config(file=file, env={"CACHEPROXY_UPSTREAM": "http://127.0.0.1:5100"})
    # A file without upstream tables combines with the shortcut as before.
    plain = tmp_path / "plain.toml"
    plain.write_text("tag_ttl = 5\n")
    config = load_config(file=plain, env={}, flags={"upstream": "http://127.0.0.1:5100"})
    assert config.upstream().url == "http://127.0.0.1:5100"


def test_password_env_is_read_by_the_configuration(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[[upstream]]\nname = "a.example"\nusername = "u"\npassword_env = "PW"\n')
    config = load_config(file=file, env={"PW": "from-env"})
    assert config.upstream("a.example").password == "from-env"
    with pytest.raises(ConfigError, match="password_env PW is not set"):
        load_config(file=file, env={})


@pytest.mark.parametrize("where", ["flag", "env", "table"])
def test_a_login_in_an_upstream_url_becomes_its_credentials(where: str, tmp_path: Path) -> None:
    url = "https://robot%40ci:p%3Ass-w0rd@Registry.Example.com:8443/ignored"
    file = tmp_path / "c.toml"
    file.write_text(f'presets = []\n[[upstream]]\nurl = "{url}"\n')
    config = {
        "flag": lambda: load_config(env={}, flags={"upstream": url}),
        "env": lambda: load_config(env={"CACHEPROXY_UPSTREAM": url}),
        "table": lambda: load_config(file=file, env={}),
    }[where]()
    up = config.upstream()
    assert (up.name, up.url) == ("registry.example.com:8443", "https://registry.example.com:8443")
    assert (up.username, up.password) == ("robot@ci", "p:ss-w0rd")
    assert config.default_upstream == "registry.example.com:8443"
    assert "p:ss-w0rd" not in repr(config) and "p%3Ass" not in repr(config)


def test_a_login_in_the_url_and_in_the_table_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[[upstream]]\nurl = "https://u:pw@r.example"\nusername = "other"\n')
    with pytest.raises(ConfigError, match="login in the url and in the table") as err:
        load_config(file=file, env={})
    assert "pw" not in str(err.value)


def test_a_bad_upstream_url_is_named_without_its_login() -> None:
    with pytest.raises(ConfigError, match="upstream") as err:
        load_config(env={}, flags={"upstream": "ftp://u:secret-pw@r.example"})
    assert "secret-pw" not in str(err.value)


def test_the_metrics_table(tmp_path: Path) -> None:
    assert load_config(env={}).metrics_loopback is True
    assert load_config(env={}).metrics_subjects == ()
    path = tmp_path / "c.toml"
    path.write_text(
        '[metrics]\nsubjects = ["prometheus"]\nloopback = false\nlisten = "0.0.0.0:9100"\n'
    )
    config = load_config(file=path, env={})
    assert config.metrics_subjects == ("prometheus",)
    assert (config.metrics_loopback, config.metrics_port) == (False, 9100)
    env = {"CACHEPROXY_METRICS_SUBJECTS": "prom,ops", "CACHEPROXY_METRICS_LOOPBACK": "0"}
    assert load_config(env=env).metrics_subjects == ("prom", "ops")
    assert load_config(env=env).metrics_loopback is False
    path.write_text("[metrics]\nopen = true\n")
    with pytest.raises(ConfigError, match=r"\[metrics\]"):
        load_config(file=path, env={})
    for clash in (
        {"metrics_listen": "127.0.0.1:5000"},
        {"metrics_listen": "x:5001", "peer_listen": "y:5001"},
    ):
        with pytest.raises(ConfigError, match="metrics_listen needs a port of its own"):
            load_config(env={}, flags={"listen": "127.0.0.1:5000", **clash})


PEERS = {"peer_secret_file": Path("/s"), "peer_listen": "10.0.0.1:5001"}


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        # The peer listener serves TLS: every peer URL must be https.
        (
            {"peer_tls_cert": Path("/c"), "peer_tls_key": Path("/k"), "self_url": "http://a:5001"},
            "https://",
        ),
        (
            {
                "tls_cert": Path("/c"),
                "tls_key": Path("/k"),
                "self_url": "https://a:5001",
                "peers": ("https://a:5001", "http://b:5001"),
            },
            "https://",
        ),
        # It does not: https URLs would never connect, a CA would protect nothing.
        ({"self_url": "https://a:5001"}, "http://"),
        ({"self_url": "http://a:5001", "peer_ca_file": Path("/ca")}, "peer_ca_file"),
        ({"peer_tls_cert": Path("/c"), "self_url": "https://a:5001"}, "peer_tls_key"),
    ],
)
def test_peer_urls_agree_with_the_peer_listeners_tls(flags: dict[str, object], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        load_config(env={}, flags={**PEERS, "peers": ("http://a:5001",), **flags})


def test_a_peer_certificate_needs_a_peer_listener() -> None:
    with pytest.raises(ConfigError, match="peer_listen"):
        load_config(env={}, flags={"peer_tls_cert": Path("/c"), "peer_tls_key": Path("/k")})


def test_peers_over_tls() -> None:
    config = load_config(
        env={"CACHEPROXY_PEER_CA_FILE": "/etc/cacheproxy/peer/ca.crt"},
        flags={
            **PEERS,
            "peer_tls_cert": Path("/c"),
            "peer_tls_key": Path("/k"),
            "self_url": "https://a:5001",
            "peers": ("https://a:5001", "https://b:5001"),
            "peer_tls_name": "cacheproxy-peer",
        },
    )
    assert config.peer_tls and config.peer_ca_file == Path("/etc/cacheproxy/peer/ca.crt")
    assert config.tls_cert is None, "the client listener stays plain"


def test_redirect_signing_credentials_need_redirect_mode(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[shared]\nbucket = "b"\nredirect_profile = "reader"\n')
    with pytest.raises(ConfigError, match="redirect = true"):
        load_config(file=file, env={})
    file.write_text('[shared]\nbucket = "b"\nredirect = true\nredirect_profile = "reader"\n')
    shared = load_config(file=file, env={"CACHEPROXY_SHARED_REDIRECT_ROLE_ARN": "arn:r"}).shared
    assert shared is not None
    assert (shared.redirect_profile, shared.redirect_role_arn) == ("reader", "arn:r")
