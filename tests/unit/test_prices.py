"""The packaged price tables, a user's own file, and the per-upstream settings that
choose which price applies."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D
from pathlib import Path

import pytest

from cacheproxy.config import ConfigError, UpstreamConfig, load_config
from cacheproxy.savings.prices import PricingError, load_pricing, parse_pricing
from cacheproxy.savings.tiers import Band

ECR_HOST = "123456789012.dkr.ecr.us-west-2.amazonaws.com"


def ecr(name: str = ECR_HOST, **kw: object) -> UpstreamConfig:
    region = name.split(".")[3]
    return UpstreamConfig(name, f"https://{name}", ecr=True, region=region, **kw)  # type: ignore[arg-type]


def test_every_packaged_entry_names_its_source_and_date() -> None:
    pricing = load_pricing()
    assert pricing.charges and pricing.limits and pricing.registries
    for entry in [*pricing.charges.values(), *pricing.limits.values()]:
        assert entry.source.startswith("https://"), entry.id
        assert dt.date.fromisoformat(entry.read) <= dt.date.today()


def test_packaged_ecr_us_west_2_is_the_seed_articles_table() -> None:
    price = load_pricing().price(ecr())
    assert price.registry.id == "ecr-private"
    (applied,) = price.charges
    assert (applied.charge.id, applied.region, applied.fallback) == (
        "aws-internet-egress",
        "us-west-2",
        False,
    )
    assert applied.schedule.bands == (
        Band(D("0.09"), D(10240)),
        Band(D("0.085"), D(40960)),
        Band(D("0.07"), D(102400)),
        Band(D("0.05")),
    )


def test_network_path_chooses_the_charges() -> None:
    pricing = load_pricing()

    def charges(up: UpstreamConfig) -> list[str]:
        return [a.charge.id for a in pricing.price(up).charges]

    assert charges(ecr(network_path="same-region")) == []
    assert charges(ecr(network_path="nat-gateway")) == ["aws-nat-gateway"]
    assert charges(ecr(network_path="vpc-endpoint")) == ["aws-vpc-endpoint"]
    assert charges(ecr(network_path="cross-region")) == ["aws-cross-region"]
    nat = pricing.price(ecr(network_path="nat-gateway")).charges[0].schedule
    assert nat.bands == (Band(D("0.045")),)
    hub = UpstreamConfig("docker.io", "https://registry-1.docker.io")
    assert charges(hub) == []
    assert charges(UpstreamConfig("quay.io", "https://quay.io", network_path="nat-gateway")) == [
        "aws-nat-gateway"
    ]


def test_region_from_the_host_then_price_region_then_the_default() -> None:
    pricing = load_pricing()
    tokyo = pricing.price(ecr("123456789012.dkr.ecr.ap-northeast-1.amazonaws.com"))
    assert tokyo.charges[0].schedule.bands[0].usd_per_gb == D("0.114")
    # price_region overrides (e.g. a registry replicated to where the proxy runs).
    overridden = pricing.price(ecr(price_region="ap-northeast-1"))
    assert overridden.charges[0].region == "ap-northeast-1"
    # A region without an entry is priced at the default region's rates, and says so.
    unknown = pricing.price(ecr("123456789012.dkr.ecr.me-south-1.amazonaws.com"))
    assert (unknown.charges[0].region, unknown.charges[0].fallback) == ("us-east-1", True)


def test_credentials_choose_the_limit_and_allowance() -> None:
    pricing = load_pricing()
    anonymous = pricing.price(UpstreamConfig("docker.io", "https://registry-1.docker.io"))
    assert anonymous.limit is not None
    assert (anonymous.limit.pulls, anonymous.limit.window_seconds) == (10, 3600)
    login = UpstreamConfig(
        "docker.io", "https://registry-1.docker.io", docker_config=Path("/x/config.json")
    )
    assert pricing.price(login).limit is not None
    assert pricing.price(login).limit.pulls == 100  # type: ignore[union-attr]
    public = pricing.price(UpstreamConfig("public.ecr.aws", "https://public.ecr.aws"))
    assert public.charges[0].charge.id == "ecr-public-anonymous"
    with_account = UpstreamConfig("public.ecr.aws", "https://public.ecr.aws", username="AWS")
    assert pricing.price(with_account).charges[0].schedule.free_gb == D(5120)


MINIMAL = """
format = 1
[charges.egress]
title = "my negotiated egress"
source = "https://example.com/contract"
read = "2026-01-31"
free_gb = 10
bands = [{ next_gb = 100, usd_per_gb = 0.05 }, { usd_per_gb = 0.01 }]

[[registries]]
id = "all"
title = "everything"
match = ["*"]
paths.internet = ["egress"]
paths.nat-gateway = []
paths.cross-region = []
paths.same-region = []
paths.vpc-endpoint = []
"""


def test_a_users_own_file_replaces_the_packaged_one(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(MINIMAL)
    pricing = load_pricing(path)
    assert pricing.origin == str(path)
    price = pricing.price(UpstreamConfig("docker.io", "https://registry-1.docker.io"))
    assert price.limit is None
    assert price.charges[0].schedule.free_gb == D(10)
    assert price.charges[0].schedule.bands[0] == Band(D("0.05"), D(100))


def test_an_upstream_no_entry_matches_is_counted_but_not_priced() -> None:
    pricing = parse_pricing(MINIMAL.replace('match = ["*"]', 'match = ["*.example.com"]'), "own")
    price = pricing.price(UpstreamConfig("docker.io", "https://registry-1.docker.io"))
    assert price.charges == () and price.limit is None
    assert price.registry.title == "no entry in own"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('source = "https://example.com/contract"\n', ""), "source"),
        (('read = "2026-01-31"', 'read = "last week"'), "read must be a date"),
        (('internet = ["egress"]', 'internet = ["nope"]'), "known charges"),
        (("paths.vpc-endpoint = []\n", ""), "paths must name exactly"),
        (("{ usd_per_gb = 0.01 }", "{ usd_per_gb = 0.01, next_gb = 5 }"), "the last has none"),
        (("usd_per_gb = 0.05", 'usd_per_gb = "cheap"'), "expected a number"),
        (("format = 1", "format = 2"), "format = 1"),
    ],
)
def test_malformed_pricing_files_are_refused(change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in MINIMAL
    with pytest.raises(PricingError, match=message):
        parse_pricing(MINIMAL.replace(old, new, 1), "mine.toml")


def test_missing_pricing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PricingError, match="cannot read pricing file"):
        load_pricing(tmp_path / "absent.toml")


def test_upstream_pricing_keys_are_validated(tmp_path: Path) -> None:
    def load(extra: str) -> UpstreamConfig:
        path = tmp_path / "c.toml"
        path.write_text(f'[[upstream]]\nname = "{ECR_HOST}"\necr = true\n{extra}\n')
        return load_config(file=path, env={}).upstreams[0]

    up = load('network_path = "nat-gateway"\nprice_region = "eu-west-1"')
    assert (up.network_path, up.price_region) == ("nat-gateway", "eu-west-1")
    assert load("").network_path == "internet"
    with pytest.raises(ConfigError, match="network_path must be one of"):
        load('network_path = "carrier-pigeon"')
    with pytest.raises(ConfigError, match="price_region"):
        load('price_region = "US West"')


def test_pricing_file_and_flush_interval_settings(tmp_path: Path) -> None:
    env = {
        "CACHEPROXY_PRICING_FILE": str(tmp_path / "p.toml"),
        "CACHEPROXY_SAVINGS_FLUSH_INTERVAL": "0.5",
    }
    config = load_config(env=env)
    assert config.pricing_file == tmp_path / "p.toml"
    assert config.savings_flush_interval == 0.5
    assert load_config(env={}).pricing_file is None
    with pytest.raises(ConfigError, match="savings_flush_interval"):
        load_config(env={"CACHEPROXY_SAVINGS_FLUSH_INTERVAL": "0"})
