"""Every upstream the proxy may talk to, created on first use, refused otherwise.

Configured upstreams and enabled public presets are few and fixed. The ``ecr``
preset admits any ``<account>.dkr.ecr.<region>.amazonaws.com`` a request names, so
those are kept in a bounded least-recently-used set: the least used one is closed
when another comes, and a request naming it again builds it anew. They are admitted
only in regions AWS has, and share boto3 clients (one per region) and AWS threads of
their own, never the configured registries' (``ecrpreset.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from ..config import Config, ConfigError, UpstreamConfig
from ..errors import Denied, UpstreamUnavailable
from ..registries import ECR_PRESET, normalize_host
from .aws import AwsClients
from .client import Timeouts, Upstream
from .credentials import EcrClientFactory, boto3_ecr_client, credentials_for, static_login
from .ecrpreset import EcrPreset
from .egress import EgressDeny, egress_deny
from .limits import RetryPolicy

log = logging.getLogger(__name__)


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
        self._dynamic: OrderedDict[str, Upstream] = OrderedDict()
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

    def get(self, host: str | None = None) -> Upstream:
        """The upstream for ``host`` (None: the default upstream), or DENIED."""
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
        up = self._make(settings, self._preset.admit(settings))
        self._dynamic[wanted] = up
        self._evict()
        return up

    def _evict(self) -> None:
        """Retire the least recently used registries past the bound; one a fill is
        using stays (its bodies are read after its requests returned) until the next
        time: the set may exceed the bound by the fills running, themselves bounded."""
        over = len(self._dynamic) - self._config.max_dynamic_upstreams
        for name in list(self._dynamic):
            if over <= 0:
                break
            if self._dynamic[name].pins:
                continue
            self._close_soon(self._dynamic.pop(name))
            over -= 1

    def _is_fixed(self, settings: UpstreamConfig) -> bool:
        """Configured upstreams and public presets; not the hosts the ecr preset admits."""
        return any(u.name == settings.name for u in self._config.upstreams) or not settings.ecr

    def _make(self, settings: UpstreamConfig, aws: AwsClients | None = None) -> Upstream:
        try:
            creds = credentials_for(settings, aws or self._aws)
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
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self._aws.close()
        if self._preset is not None:
            self._preset.close()
