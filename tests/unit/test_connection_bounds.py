"""The bounds on connections: what fits in the descriptor limit (budget.plan), and
which connection a listener lets in, sheds or refuses at its bound (Gate)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from cacheproxy.config import Config, ConfigError, load_config
from cacheproxy.connections import budget
from cacheproxy.connections.gate import OVERFLOW, Gate
from cacheproxy.connections.guard import Guard


def _config(**flags: Any) -> Config:
    return load_config(
        env={"HOME": "/home/u"}, flags={"upstream": "http://127.0.0.1:5100", **flags}
    )


def _fits(config: Config, bounds: budget.Bounds, nofile: int) -> bool:
    used = sum(budget.reserved(config).values())
    return used + budget.PER_CONNECTION * (bounds.client + bounds.peer) <= nofile


def test_the_default_bound_is_what_the_limit_leaves_up_to_the_cap() -> None:
    config = _config()
    roomy = budget.plan(config, 1 << 20)
    assert (roomy.client, roomy.peer, roomy.warning) == (budget.AUTO_CAP, 0, None)
    tight = budget.plan(config, 2048)
    assert budget.MIN_CONNECTIONS <= tight.client < budget.AUTO_CAP
    assert tight.warning is None
    assert _fits(config, tight, 2048)


def test_the_peer_listener_gets_a_share_of_its_own() -> None:
    config = _config(peer_listen="127.0.0.1:5001")
    bounds = budget.plan(config, 8192)
    assert 0 < bounds.peer < bounds.client
    assert _fits(config, bounds, 8192)
    assert (
        budget.plan(_config(peer_listen="127.0.0.1:5001", max_peer_connections=7), 8192).peer == 7
    )


def test_a_bound_that_does_not_fit_is_lowered_with_the_reason() -> None:
    config = _config(max_connections=50_000)
    bounds = budget.plan(config, 20_000)
    assert bounds.client < 50_000
    assert _fits(config, bounds, 20_000)
    assert bounds.warning is not None
    assert f"max_connections lowered from 50000 to {bounds.client}" in bounds.warning
    assert "RLIMIT_NOFILE is 20000" in bounds.warning and "fills" in bounds.warning
    # A bound that fits is kept as configured.
    assert budget.plan(_config(max_connections=100), 20_000).client == 100


def test_fills_count_against_the_descriptors() -> None:
    few = budget.reserved(_config(max_fills=8, upstream_segments=1))["fills"]
    many = budget.reserved(_config(max_fills=128, upstream_segments=4))["fills"]
    assert (few, many) == (8 * 2, 128 * 5)


def test_no_room_for_connections_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match=r"no room for 16 client connections.*max_fills"):
        budget.plan(_config(), 512)


@pytest.mark.parametrize(
    "flags",
    [
        {"send_timeout": 0},
        {"send_timeout": -1},
        {"max_connections": -1},
        {"max_peer_connections": -5},
    ],
)
def test_bad_bounds_are_config_errors(flags: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        _config(**flags)


def test_the_settings_come_from_the_environment() -> None:
    env = {
        "HOME": "/home/u",
        "CACHEPROXY_SEND_TIMEOUT": "12.5",
        "CACHEPROXY_MAX_CONNECTIONS": "300",
        "CACHEPROXY_MAX_PEER_CONNECTIONS": "40",
    }
    config = load_config(env=env)
    assert (config.send_timeout, config.max_connections, config.max_peer_connections) == (
        12.5,
        300,
        40,
    )
    defaults = load_config(env={"HOME": "/home/u"})
    assert (defaults.send_timeout, defaults.max_connections) == (30.0, 0)


class FakeGuard:
    """What a Gate asks of a connection's guard."""

    def __init__(self, idle: bool = True) -> None:
        self.address = "127.0.0.1"
        self.over = False
        self.waiting = idle
        self.was_shed = False

    def idle(self) -> bool:
        return self.waiting and not self.was_shed

    def shed(self) -> None:
        self.was_shed = True


def _admit(gate: Gate, guard: FakeGuard) -> bool:
    return gate.admit(cast(Guard, guard))


def test_at_the_bound_the_longest_idle_goes_then_the_rest_are_answered() -> None:
    gate = Gate("client", bound=3, header_timeout=30.0, send_timeout=30.0)
    first, second, third = FakeGuard(), FakeGuard(), FakeGuard(idle=False)
    for guard in (first, second, third):
        assert _admit(gate, guard) and not guard.over
    gate.wait(cast(Guard, first))  # first served a request and waits again: now newest
    newcomer = FakeGuard()
    assert _admit(gate, newcomer) and not newcomer.over
    assert second.was_shed and not first.was_shed and gate.stats.shed == 1
    # Busy connections are never shed: beyond them, connections are answered (over)...
    first.waiting = newcomer.waiting = False
    overs = [FakeGuard() for _ in range(OVERFLOW)]
    assert all(_admit(gate, guard) and guard.over for guard in overs)
    assert gate.open == 3 + OVERFLOW and gate.stats.refused == 0
    # ...up to OVERFLOW at once; beyond, refused unread.
    assert not _admit(gate, FakeGuard())
    assert gate.stats.refused == 1
    # A connection that goes makes room again.
    gate.gone(cast(Guard, third))
    late = FakeGuard()
    assert _admit(gate, late) and not late.over
