"""The ecr preset's set of registries, against a client that names made-up accounts:
few new ones a minute per client, a share each, those in use evicted last, a failed
token dropped at once and remembered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from cacheproxy.config import Config, UpstreamConfig
from cacheproxy.errors import CredentialsUnavailable, TooManyRequests
from cacheproxy.upstream.credentials import ECR_FAILURE_MEMORY, EcrCredentials
from cacheproxy.upstream.pool import UpstreamPool
from tests.support.clock import Clock

STRANGER, NEIGHBOUR = "address 192.0.2.9", "address 192.0.2.8"
TOKEN = {"authorizationToken": "QVdTOnBhc3N3b3Jk", "expiresAt": 4102444800}


def host(i: int) -> str:
    return f"{100000000000 + i}.dkr.ecr.us-west-2.amazonaws.com"


class Ecr:
    """Stands in for boto3's ECR client: tokens for the accounts in ``real``, an
    error (as for an account that does not exist) for any other."""

    def __init__(self, real: set[str]) -> None:
        self.real = real
        self.asked: list[str] = []

    def __call__(self, config: UpstreamConfig) -> Any:
        return self

    def get_authorization_token(self, registryIds: list[str]) -> dict[str, Any]:
        self.asked.append(registryIds[0])
        if registryIds[0] not in self.real:
            raise RuntimeError("AccessDeniedException")
        return {"authorizationData": [TOKEN]}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ecr() -> Ecr:
    return Ecr({host(0)[:12]})


def pool_of(ecr: Ecr, clock: Clock, **settings: Any) -> UpstreamPool:
    config = Config(presets=("docker.io", "ecr"), ecr_regions=("us-west-2",), **settings)
    return UpstreamPool(config, clock=clock, preset_client_factory=ecr, deny=())


@pytest.fixture
async def started() -> AsyncIterator[list[UpstreamPool]]:
    pools: list[UpstreamPool] = []
    yield pools
    for pool in pools:
        await pool.close()


async def start(pools: list[UpstreamPool], pool: UpstreamPool) -> UpstreamPool:
    pools.append(pool)
    await pool.start()
    return pool


def names(pool: UpstreamPool) -> set[str]:
    return {up.name for up in pool.all()}


async def test_a_client_brings_in_only_a_few_new_registries_a_minute(
    ecr: Ecr, clock: Clock, started: list[UpstreamPool]
) -> None:
    pool = await start(started, pool_of(ecr, clock, ecr_new_registries_per_minute=3))
    for i in range(1, 4):
        pool.get(host(i), STRANGER)
    clock.now += 20
    with pytest.raises(TooManyRequests) as refused:
        pool.get(host(4), STRANGER)
    # The spec's code for a client that asks too often, and when it may ask again.
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "40"}
    assert host(4) not in names(pool)
    # A registry already in the set is not new; another client is not bounded by it.
    assert pool.get(host(1), STRANGER).name == host(1)
    assert pool.get(host(4), NEIGHBOUR).name == host(4)
    assert pool.get(host(4), STRANGER).name == host(4)  # in the set now: not new
    # The operator's commands (no client) are not bounded at all.
    for i in range(5, 9):
        pool.get(host(i))
    clock.now += 40
    assert pool.get(host(9), STRANGER).name == host(9)


async def test_a_client_holds_a_share_and_its_own_oldest_goes_for_its_next(
    ecr: Ecr, clock: Clock, started: list[UpstreamPool]
) -> None:
    pool = await start(started, pool_of(ecr, clock, ecr_new_registries_per_minute=100))
    neighbours = pool.get(host(50), NEIGHBOUR)
    stranger = [pool.get(host(i), STRANGER) for i in range(1, 5)]  # its share: 4
    pool.get(host(5), STRANGER)
    assert host(1) not in names(pool)  # its own oldest went, nobody else's
    assert names(pool) == {host(50), *(host(i) for i in range(2, 6))}
    # A registry that served a pull is no one's share: it is in use.
    stranger[1].last_success = clock.now
    pool.get(host(6), STRANGER)  # holds 3, 4, 5 and 6 now
    assert {host(i) for i in range(2, 7)} <= names(pool)
    pool.get(host(7), STRANGER)
    assert host(2) in names(pool) and host(3) not in names(pool)
    assert neighbours in pool.all()


async def test_when_the_set_is_full_registries_in_use_go_last(
    ecr: Ecr, clock: Clock, started: list[UpstreamPool]
) -> None:
    pool = await start(started, pool_of(ecr, clock, max_dynamic_upstreams=4))
    used = pool.get(host(0))
    used.last_success = clock.now  # a pull succeeded: in use
    for i in range(1, 4):
        pool.get(host(i))
    # The least recently used one is the one in use: the next least goes instead.
    for i in range(4, 30):
        pool.get(host(i))
        assert used in pool.all() and len(pool.all()) == 4
    clock.now += 7200  # not in use any more: least recently used, it goes first
    pool.get(host(30))
    assert used not in pool.all()


async def test_a_registry_whose_token_failed_goes_at_once_and_is_remembered(
    ecr: Ecr, clock: Clock, started: list[UpstreamPool]
) -> None:
    pool = await start(started, pool_of(ecr, clock))
    made_up = pool.get(host(7))
    assert isinstance(made_up.credentials, EcrCredentials)
    with pytest.raises(CredentialsUnavailable):
        await made_up.credentials.header()
    assert host(7) not in names(pool)
    asked = len(ecr.asked)
    for _ in range(5):  # answered from memory: no AWS call, no place in the set
        with pytest.raises(CredentialsUnavailable, match="recently failed") as failed:
            pool.get(host(7))
        assert failed.value.headers == {"Retry-After": str(int(ECR_FAILURE_MEMORY))}
    assert len(ecr.asked) == asked and host(7) not in names(pool)
    clock.now += ECR_FAILURE_MEMORY
    assert pool.get(host(7)).name == host(7)  # forgotten: tried anew
    # A registry in use keeps its place when a token fails (its refresher retries).
    real = pool.get(host(0))
    assert isinstance(real.credentials, EcrCredentials)
    assert (await real.credentials.header()).startswith("Basic ")
    real.last_success = clock.now
    ecr.real.clear()
    with pytest.raises(CredentialsUnavailable):
        await real.credentials.refresh(await real.credentials.header())
    assert real in pool.all()
