"""Every upstream the proxy may talk to, created on first use, refused otherwise."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..config import Config, ConfigError
from ..errors import Denied, UpstreamUnavailable
from ..registries import normalize_host
from .client import RetryPolicy, Timeouts, Upstream
from .credentials import (
    EcrClientFactory,
    EcrCredentials,
    boto3_ecr_client,
    credentials_for,
    static_login,
)

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
    ) -> None:
        self._config = config
        self._ecr_client_factory = ecr_client_factory
        self._timeouts = Timeouts(config.connect_timeout, config.read_timeout)
        self._clock = clock
        self._by_name: dict[str, Upstream] = {}

    def get(self, host: str | None = None) -> Upstream:
        """The upstream for ``host`` (None: the default upstream), or DENIED."""
        wanted = normalize_host(host) if host else self._config.default_upstream
        up = self._by_name.get(wanted)
        if up is not None:
            return up
        try:
            settings = self._config.upstream(wanted)
        except KeyError:
            raise Denied(
                f"registry {wanted[:200]} is not configured on this proxy",
                detail={"registry": wanted[:200]},
            ) from None
        up = self._by_name.get(settings.name)
        if up is None:
            try:
                creds = credentials_for(settings, self._ecr_client_factory)
            except ConfigError as exc:
                log.error("%s", exc)
                raise UpstreamUnavailable(
                    f"the credentials for {settings.name} cannot be read"
                ) from None
            if isinstance(creds, EcrCredentials):
                creds.start()
            kwargs = {"clock": self._clock} if self._clock is not None else {}
            up = Upstream(
                settings,
                self._timeouts,
                creds,
                offline=self._config.offline,
                retry=RetryPolicy(
                    self._config.upstream_retries, self._config.upstream_retry_budget
                ),
                connections=self._config.upstream_connections,
                **kwargs,
            )
            log.info("upstream %s -> %s", settings.name, settings.url)
            self._by_name[settings.name] = up
        self._by_name[wanted] = up
        return up

    def check(self) -> None:
        """Read every configured upstream's static credentials now (blocking), so a
        missing password file stops the start instead of failing pulls later."""
        for settings in self._config.upstreams:
            if not settings.ecr:
                static_login(settings)

    def all(self) -> list[Upstream]:
        return list({id(u): u for u in self._by_name.values()}.values())

    async def close(self) -> None:
        for up in self.all():
            await up.close()
        self._by_name.clear()
