"""Every upstream the proxy may talk to, created on first use, refused otherwise.

Configured upstreams and enabled public presets are few and fixed. The ``ecr``
preset admits any ``<account>.dkr.ecr.<region>.amazonaws.com`` a request names, so
those are kept in a bounded set: one goes when another comes, and a request naming
it again builds it anew. They are admitted only in regions AWS has, and share boto3
clients (one per region) and AWS threads of their own, never the configured
registries' (``ecrpreset.py``).

Accounts are free to make up, so the set is guarded against a client that names
many (``newcomers.py``): each client brings in only a few new registries a minute,
and holds at most a few that have not served a pull yet (its own oldest goes for
its next); a registry whose token ECR refused goes at once, and is remembered as
failed for a while; when the set is full, registries in use (a pull succeeded
recently) go last. A stranger's made-up accounts then churn only among themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from ..config import Config, ConfigError, UpstreamConfig
from ..errors import Denied, TooManyRequests, UpstreamUnavailable
from ..registries import ECR_PRESET, normalize_host
from .aws import AwsClients
from .client import Timeouts, Upstream
from .credentials import (
    ECR_FAILURE_MEMORY,
    EcrClientFactory,
    EcrCredentials,
    boto3_ecr_client,
    credentials_for,
    static_login,
)
from .ecrpreset import EcrPreset
from .egress import EgressDeny, egress_deny
from .limits import RetryPolicy
from .newcomers import Newcomers, retry_after

log = logging.getLogger(__name__)

# A preset registry that answered a request with success this recently is in use:
# when the set is full, it goes after every one that is not.
IN_USE_SECONDS = 3600.0
# What a client at its share whose own registries all have fills running is told.
HELD_RETRY = 10.0


class UpstreamPool:
    """Resolves a registry host to its :class:`Upstream`.

    Configured upstreams and enabled presets only: a request naming any other host
    is refused with DENIED before anything is dialled, so the proxy is never an
    open relay.
    """

    def __init__(
        self,
        config: Config,
        ecr_client_factory: EcrClientFactory = boto3_ecr_client,
        clock: Callable[[], float] | None = None,
        preset_client_factory: EcrClientFactory | None = None,
        deny: EgressDeny | None = None,
    ) -> None:
        """``deny``: ``config.egress_deny`` made ready (``egress.egress_deny``, which
        reads the node's addresses in a thread); None makes it here, blocking."""
        self._config = config
        self._deny = deny if deny is not None else egress_deny(config.egress_deny)
        self._aws = AwsClients(ecr_client_factory)
        # The ecr preset's registries build and call on threads of their own.
        self._preset = (
            EcrPreset(config.ecr_regions, preset_client_factory)
            if ECR_PRESET in config.presets
            else None
        )
        self._timeouts = Timeouts(
            config.connect_timeout, config.read_timeout, config.upstream_fail_fast
        )
        self._clock = clock
        self._fixed: dict[str, Upstream] = {}
        # The preset's registries, least recently used first, and who brought each in.
        self._dynamic: OrderedDict[str, Upstream] = OrderedDict()
        self._brought_by: dict[str, str | None] = {}
        self._newcomers = Newcomers(config.ecr_new_registries_per_minute, clock or time.monotonic)
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def aws(self) -> AwsClients:
        """The AWS threads (and clients) the configured upstreams use; the shared tier
        signs there too. The ecr preset's registries have their own (``preset``)."""
        return self._aws

    @property
    def preset(self) -> EcrPreset | None:
        """The ecr preset's admission, threads and clients (None: not enabled)."""
        return self._preset

    async def start(self) -> None:
        """Learn the regions the ecr preset admits (nothing to do without it)."""
        if self._preset is not None:
            await self._preset.start()

    def get(self, host: str | None = None, client: str | None = None) -> Upstream:
        """The upstream for ``host`` (None: the default upstream), or DENIED.

        ``client``: who asks (``handlers.requester_of``), for the bounds on the
        registries it brings into the ecr preset's set; None (the operator's own
        commands, a peer node speaking for its bounded clients) is not bounded.
        """
        wanted = normalize_host(host) if host else self._config.default_upstream
        up = self._fixed.get(wanted)
        if up is not None:
            return up
        up = self._dynamic.get(wanted)
        if up is not None:
            self._dynamic.move_to_end(wanted)
            return up
        try:
            settings = self._config.upstream(wanted)
        except KeyError:
            raise Denied(
                f"registry {wanted[:200]} is not configured on this proxy",
                detail={"registry": wanted[:200]},
            ) from None
        if self._is_fixed(settings):
            up = self._fixed.get(settings.name) or self._make(settings)
            self._fixed[settings.name] = self._fixed[wanted] = up
            return up
        assert self._preset is not None  # only the ecr preset admits other hosts
        return self._bring_in(wanted, settings, self._preset, client)

    def _bring_in(
        self, wanted: str, settings: UpstreamConfig, preset: EcrPreset, client: str | None
    ) -> Upstream:
        """A new registry of the ecr preset, within ``client``'s bounds."""
        self._newcomers.check_failed(wanted)
        aws = preset.admit(settings)  # DENIED, uncounted, for a region it does not serve
        own = None
        if client is not None:
            own = self._own_to_replace(client, wanted)
            self._newcomers.admit(client, wanted)
        if own is not None:
            self._drop(own)
        up = self._make(settings, aws, self._token_failed, lambda: self._lane_of(wanted))
        self._dynamic[wanted] = up
        self._brought_by[wanted] = client
        self._evict(wanted)
        return up

    def _own_to_replace(self, client: str, wanted: str) -> str | None:
        """The registry ``client`` gives up for ``wanted`` (its least recently used one
        that has served no pull yet) when it holds its share of those; None under it.
        TOOMANYREQUESTS when every one of them has a fill running."""
        held = [
            name
            for name, up in self._dynamic.items()
            if self._brought_by.get(name) == client and not self._in_use(up)
        ]
        if len(held) < self._config.ecr_registries_per_client:
            return None
        for name in held:
            if not self._dynamic[name].pins:
                return name
        raise TooManyRequests(
            f"this client holds {len(held)} registries of the ecr preset that have not"
            " served a pull yet (ecr_registries_per_client)",
            detail={"registry": wanted[:200]},
            headers=retry_after(HELD_RETRY),
        )

    def _in_use(self, up: Upstream) -> bool:
        return up.served_within(IN_USE_SECONDS)

    def _lane_of(self, name: str) -> str | None:
        """Whose line on the preset's AWS threads ``name``'s token calls wait in: the
        client that brought it in, until it is in use (then no one's: it serves
        every client that pulls from it)."""
        up = self._dynamic.get(name)
        if up is None or self._in_use(up):
            return None
        return self._brought_by.get(name)

    def _evict(self, newcomer: str) -> None:
        """Retire registries past the bound: those not in use first, then those in use,
        least recently used first in each; never the ``newcomer`` just made. One a fill
        is using stays (its bodies are read after its requests returned) until the
        next time: the set may exceed the bound by the fills running, themselves
        bounded."""
        over = len(self._dynamic) - self._config.max_dynamic_upstreams
        if over <= 0:
            return
        # sorted() is stable: within each group the order stays least recently used first.
        candidates = sorted(
            (name for name in self._dynamic if name != newcomer),
            key=lambda name: self._in_use(self._dynamic[name]),
        )
        for name in candidates:
            if over <= 0:
                break
            if self._dynamic[name].pins:
                continue
            self._drop(name)
            over -= 1

    def _drop(self, name: str) -> None:
        self._brought_by.pop(name, None)
        self._close_soon(self._dynamic.pop(name))

    def _token_failed(self, credentials: EcrCredentials) -> None:
        """ECR refused a preset registry's token: unless the registry is in use (its
        refresher tries again), it leaves the set now, and naming it again is answered
        from memory for a while, without an AWS call or a place in the set."""
        name = credentials.name
        up = self._dynamic.get(name)
        if up is None or up.credentials is not credentials or self._in_use(up):
            return  # already gone (an old copy's failure), or in use
        self._newcomers.failed(name, ECR_FAILURE_MEMORY)
        self._drop(name)
        log.info("ecr preset registry %s dropped: its token failed", name)

    def _is_fixed(self, settings: UpstreamConfig) -> bool:
        """Configured upstreams and public presets; not the hosts the ecr preset admits."""
        return any(u.name == settings.name for u in self._config.upstreams) or not settings.ecr

    def _make(
        self,
        settings: UpstreamConfig,
        aws: AwsClients | None = None,
        on_failure: Callable[[EcrCredentials], None] | None = None,
        lane: Callable[[], str | None] | None = None,
    ) -> Upstream:
        try:
            creds = credentials_for(settings, aws or self._aws, on_failure, lane)
        except ConfigError as exc:
            log.error("%s", exc)
            raise UpstreamUnavailable(
                f"the credentials for {settings.name} cannot be read"
            ) from None
        kwargs = {"clock": self._clock} if self._clock is not None else {}
        log.info("upstream %s -> %s", settings.name, settings.url)
        return Upstream(
            settings,
            self._timeouts,
            creds,
            offline=self._config.offline,
            retry=RetryPolicy(self._config.upstream_retries, self._config.upstream_retry_budget),
            connections=self._config.upstream_connections,
            egress_deny=self._deny,
            **kwargs,
        )

    def _close_soon(self, up: Upstream) -> None:
        """Retire an upstream that left the set, without making a request wait for it:
        requests in flight finish first (up to the read timeout)."""
        retiring = up.retire(self._config.read_timeout)
        task = asyncio.get_running_loop().create_task(retiring, name=f"retire {up.name}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def check(self) -> None:
        """Read every configured upstream's static credentials now (blocking), so a
        missing password file stops the start instead of failing pulls later."""
        for settings in self._config.upstreams:
            if not settings.ecr:
                static_login(settings)

    def all(self) -> list[Upstream]:
        seen = {id(u): u for u in [*self._fixed.values(), *self._dynamic.values()]}
        return list(seen.values())

    async def close(self) -> None:
        for up in self.all():
            await up.close()
        self._fixed.clear()
        self._dynamic.clear()
        self._brought_by.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self._aws.close()
        if self._preset is not None:
            self._preset.close()
