"""The ecr preset: only regions AWS has, clients from one session, threads of its own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from cacheproxy.config import UpstreamConfig
from cacheproxy.errors import Denied, UpstreamUnavailable
from cacheproxy.upstream.aws import AwsBusy, AwsClients
from cacheproxy.upstream.credentials import EcrCredentials
from cacheproxy.upstream.ecrpreset import EcrPreset, SessionClients, known_regions


def preset_registry(region: str, domain: str = "amazonaws.com") -> UpstreamConfig:
    host = f"123456789012.dkr.ecr.{region}.{domain}"
    return UpstreamConfig(host, f"https://{host}", ecr=True, region=region)


def test_botocore_knows_the_regions_of_each_domain() -> None:
    regions = known_regions()
    assert {"us-east-1", "eu-west-1", "us-gov-west-1"} <= regions["amazonaws.com"]
    assert "cn-north-1" in regions["amazonaws.com.cn"]
    assert "cn-north-1" not in regions["amazonaws.com"]


async def test_only_regions_aws_has_are_admitted_and_nothing_is_built_for_others() -> None:
    built: list[str | None] = []

    def factory(config: UpstreamConfig) -> Any:
        built.append(config.region)
        return object()

    preset = EcrPreset(factory=factory)
    try:
        with pytest.raises(UpstreamUnavailable):
            preset.admit(preset_registry("us-east-1"))  # not started: nothing known yet
        await preset.start()
        assert preset.admit(preset_registry("us-east-1")) is preset.aws
        assert preset.admit(preset_registry("cn-north-1", "amazonaws.com.cn")) is preset.aws
        for made_up in ("xx-fake-1", "us-east-99", "eu-nowhere-3"):
            with pytest.raises(Denied, match="not an AWS region"):
                preset.admit(preset_registry(made_up))
        with pytest.raises(Denied):  # a region on another partition's domain
            preset.admit(preset_registry("us-east-1", "amazonaws.com.cn"))
        assert built == []
    finally:
        preset.close()


async def test_ecr_regions_names_the_regions_admitted() -> None:
    preset = EcrPreset(("eu-west-1", "cn-north-1"), factory=lambda config: object())
    try:
        await preset.start()
        preset.admit(preset_registry("eu-west-1"))
        preset.admit(preset_registry("cn-north-1", "amazonaws.com.cn"))
        with pytest.raises(Denied):
            preset.admit(preset_registry("us-east-1"))
    finally:
        preset.close()


def test_the_presets_clients_come_from_one_session() -> None:
    clients = SessionClients()
    east, west = (clients(preset_registry(r)) for r in ("us-east-1", "us-west-2"))
    assert (east.meta.region_name, west.meta.region_name) == ("us-east-1", "us-west-2")
    assert east._loader is west._loader  # the service model is loaded once


async def test_calls_beyond_the_bound_are_refused_and_not_remembered_as_failures() -> None:
    stuck = threading.Event()
    aws = AwsClients(lambda config: object(), threads=1, max_waiting=2)
    try:
        held = [asyncio.create_task(aws.run(lambda: stuck.wait(30))) for _ in range(2)]
        await asyncio.sleep(0)
        assert aws.waiting == 2
        with pytest.raises(AwsBusy):
            await aws.run(lambda: None)
        credentials = EcrCredentials(preset_registry("us-east-1"), aws)
        with pytest.raises(AwsBusy):
            await credentials.header()
        stuck.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*held)
        # Not a failure of the registry: the next request asks AWS at once.
        with pytest.raises(Exception) as raised:
            await credentials.header()
        assert "recently failed" not in str(raised.value)
        await credentials.close()
    finally:
        stuck.set()
        aws.close()


async def test_one_owners_slow_calls_never_hold_every_thread() -> None:
    """With a line per owner, a client whose calls hang takes one thread at a time: a
    call of another owner runs at once, and what waits in the lines counts against
    the bound on waiting calls."""
    stuck = threading.Event()
    aws = AwsClients(lambda config: object(), threads=2, max_waiting=4, per_owner=1)
    try:
        held = [asyncio.create_task(aws.run(lambda: stuck.wait(30), "stranger")) for _ in range(3)]
        await asyncio.sleep(0)
        assert (aws.waiting, aws.queued) == (1, 2)
        async with asyncio.timeout(10):
            assert await aws.run(lambda: "token", "neighbour") == "token"
            assert await aws.run(lambda: "token") == "token"  # no owner: no line
        held.append(asyncio.create_task(aws.run(lambda: stuck.wait(30), "stranger")))
        await asyncio.sleep(0)
        with pytest.raises(AwsBusy):  # one on the executor and three in line: the bound
            await aws.run(lambda: None, "neighbour")
        stuck.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*held)
        assert (aws.waiting, aws.queued) == (0, 0)
    finally:
        stuck.set()
        aws.close()
