"""Where an upstream's login comes from: config (a password given, or read from the
environment by the configuration), a file, a Docker ``config.json``, or AWS ECR's
``GetAuthorizationToken``.

Secrets are read here and nowhere else, and never logged: every message names the
source (a path, a variable name), never the value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..config import ConfigError, UpstreamConfig
from ..errors import CredentialsUnavailable, Unauthorized, UpstreamUnavailable
from ..registries import DOCKER_HUB, ecr_host, normalize_host
from ..singleflight import SingleFlight
from .aws import AwsBusy, AwsClients, ClientFactory
from .tokens import basic_header

log = logging.getLogger(__name__)

# ECR tokens live 12 hours; refresh at half-life, never more often than the floor
# (moto, for one, answers with an expiry already in the past).
ECR_REFRESH_SHARE = 0.5
ECR_MIN_REFRESH = 60.0
ECR_RETRY = 30.0
# A failed GetAuthorizationToken is not retried for this long: requests fail at once.
ECR_FAILURE_MEMORY = 10.0


class Credentials(Protocol):
    """A source of ``Authorization: Basic`` values for one upstream."""

    #: Send the credentials before the upstream asks (ECR always wants them).
    preemptive: bool

    async def header(self) -> str:
        """The current ``Basic ...`` header value."""

    async def refresh(self, stale: str) -> bool:
        """Replace ``stale`` after the upstream refused it; False if nothing changes."""

    async def close(self) -> None:
        """Stop background work."""


class StaticCredentials:
    """A username and password that do not change while the proxy runs."""

    preemptive = False

    def __init__(self, username: str, password: str) -> None:
        self._header = basic_header(username, password)

    async def header(self) -> str:
        return self._header

    async def refresh(self, stale: str) -> bool:
        return False

    async def close(self) -> None:
        return None


def docker_config_login(path: Path, host: str) -> tuple[str, str] | None:
    """The (username, password) a Docker ``config.json`` holds for ``host``.

    ``auths`` keys are hosts or URLs (``https://index.docker.io/v1/`` for Docker
    Hub); an entry has ``auth`` (base64 of ``user:password``) or the two fields.
    Credential helpers (``credsStore``) are not run.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read docker config {path}: {exc}") from exc
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = normalize_host(host)
    for key, entry in auths.items():
        entry_host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
        if normalize_host(entry_host) != wanted or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: the auth entry for {key} is not base64") from exc
            if sep:
                return user, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def _docker_config_host(config: UpstreamConfig) -> str:
    return "index.docker.io" if config.name == DOCKER_HUB else config.name


def static_login(config: UpstreamConfig) -> tuple[str, str] | None:
    """The configured username and password, from wherever the config points
    (``password_env`` was read into ``password`` by the configuration)."""
    if config.docker_config is not None:
        found = docker_config_login(config.docker_config, _docker_config_host(config))
        if found is None:
            found = docker_config_login(config.docker_config, config.host)
        if found is None:
            log.warning("%s has no login for %s", config.docker_config, config.name)
        return found
    if config.username is None:
        return None
    if config.password is not None:
        return config.username, config.password
    if config.password_file is not None:
        try:
            return config.username, config.password_file.read_text().strip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"upstream {config.name}: cannot read password_file {config.password_file}"
            ) from exc
    return config.username, ""


EcrClientFactory = ClientFactory


def quiet_aws_logs() -> None:
    """Keep boto3/botocore from logging request and response bodies.

    At DEBUG botocore logs whole responses, GetAuthorizationToken's token
    included; no log level of the proxy's may leak a credential.
    """
    for name in ("botocore", "boto3", "urllib3"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def boto3_ecr_client(
    config: UpstreamConfig, role_clock: Callable[[], datetime.datetime] | None = None
) -> Any:
    """An ECR client from boto3's default credential chain, a profile, or a role
    (``role_clock``: the time the role's keys are judged by, for tests)."""
    import boto3

    quiet_aws_logs()
    session = boto3.session.Session(profile_name=config.aws_profile, region_name=config.region)
    if config.aws_role_arn:
        session = assumed_role_session(session, config.aws_role_arn, config.region, role_clock)
    return session.client("ecr")


def assumed_role_session(
    base: Any,
    role_arn: str,
    region: str | None,
    clock: Callable[[], datetime.datetime] | None = None,
) -> Any:
    """A boto3 session acting as ``role_arn``, its keys renewed before they expire.

    AssumeRole keys last an hour: taken once, ECR would stop answering an hour after
    start. botocore's refreshable credentials call AssumeRole again (with ``base``'s
    own, themselves refreshed, credentials) when less than 15 minutes are left, on
    the thread that is about to use them, which is a boto3 worker thread here.
    """
    import boto3
    import botocore.session
    from botocore.credentials import (
        CredentialProvider,
        CredentialResolver,
        DeferredRefreshableCredentials,
    )

    def assume() -> dict[str, str]:
        answer = base.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="cacheproxy")
        keys = answer["Credentials"]
        expiry = keys["Expiration"]
        log.info("assumed role %s until %s", role_arn, expiry)
        return {
            "access_key": keys["AccessKeyId"],
            "secret_key": keys["SecretAccessKey"],
            "token": keys["SessionToken"],
            "expiry_time": expiry.isoformat() if hasattr(expiry, "isoformat") else str(expiry),
        }

    extra = {"time_fetcher": clock} if clock is not None else {}
    credentials = DeferredRefreshableCredentials(assume, "assume-role", **extra)

    class Role(CredentialProvider):  # type: ignore[misc]
        METHOD = "assume-role"

        def load(self) -> Any:
            return credentials

    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver([Role()]))
    return boto3.session.Session(botocore_session=core, region_name=region)


class EcrCredentials:
    """ECR's 12-hour tokens, fetched on the AWS threads and refreshed ahead of expiry.

    Many requests needing a token at once cause one ``GetAuthorizationToken``. After
    the first token, a background task refreshes at half-life so no request waits
    on boto3; a registry that never gave a token has no task. A failure is
    remembered briefly: requests meanwhile fail at once instead of queueing on AWS.
    """

    preemptive = True

    def __init__(
        self,
        config: UpstreamConfig,
        aws: AwsClients | None = None,
        clock: Callable[[], float] = time.time,
        client_factory: EcrClientFactory = boto3_ecr_client,
        on_failure: Callable[[EcrCredentials], None] | None = None,
        lane: Callable[[], str | None] | None = None,
    ) -> None:
        """``on_failure``: told when ECR refused a token (not when the threads were
        busy), so the owner can let a registry that does not answer go. ``lane``:
        whose line on the AWS threads a token call waits in (``AwsClients.run``)."""
        self._config = config
        self._on_failure = on_failure
        self._lane = lane
        parsed = ecr_host(config.name)
        self._registry_id = parsed.account if parsed else None
        self._owns_aws = aws is None
        self._aws = aws if aws is not None else AwsClients(client_factory)
        self._clock = clock
        self._header: str | None = None
        self._failed_until = 0.0
        self.expires_at = 0.0
        self.refresh_at = 0.0
        self._flight: SingleFlight[str, str] = SingleFlight()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        """The registry the tokens are for."""
        return self._config.name

    @property
    def calls(self) -> int:
        """GetAuthorizationToken calls made so far."""
        return self._flight.calls

    @property
    def refreshing(self) -> bool:
        """Whether a background refresher runs (only after a first token)."""
        return self._task is not None

    async def header(self) -> str:
        if self._header is None or self._clock() >= self.refresh_at:
            if self._clock() < self._failed_until:
                raise CredentialsUnavailable(
                    "cannot get an ECR authorization token (recently failed)"
                )
            return await self._flight.run("token", self._fetch)
        return self._header

    async def refresh(self, stale: str) -> bool:
        if self._header == stale:
            log.info("ECR token for %s refused; fetching a new one", self._config.name)
            self._header = None
            await self._flight.run("token", self._fetch)
        return True

    def start(self) -> None:
        """Refresh in the background from now on (the owner calls close())."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresher(), name=f"ecr {self._config.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._flight.close()
        if self._owns_aws:
            self._aws.close()

    async def _refresher(self) -> None:
        while True:
            delay = max(self.refresh_at - self._clock(), ECR_MIN_REFRESH)
            await asyncio.sleep(delay)
            try:
                await self._flight.run("token", self._fetch)
            except (Unauthorized, UpstreamUnavailable) as exc:
                log.warning("ECR token refresh for %s failed: %s", self._config.name, exc)
                self.refresh_at = self._clock() + ECR_RETRY

    async def _fetch(self) -> str:
        started = self._clock()
        try:
            data = await self._aws.run(self._call, self._lane() if self._lane else None)
        except AwsBusy:
            raise  # the threads are busy, not this registry at fault: nothing to remember
        except Exception as exc:  # botocore raises many kinds; none may escape raw
            self._failed()
            log.warning(
                "ECR GetAuthorizationToken for %s failed: %s", self._config.name, type(exc).__name__
            )
            raise CredentialsUnavailable("cannot get an ECR authorization token") from exc
        token = data.get("authorizationToken")
        if not isinstance(token, str) or not token:
            self._failed()
            raise Unauthorized("ECR returned no authorization token")
        expires = data.get("expiresAt")
        if isinstance(expires, datetime.datetime):
            expires_at = expires.timestamp()
        elif isinstance(expires, int | float):
            expires_at = float(expires)
        else:
            expires_at = started + 12 * 3600
        lifetime = max(expires_at - started, 0.0)
        self.expires_at = expires_at
        self.refresh_at = started + max(lifetime * ECR_REFRESH_SHARE, ECR_MIN_REFRESH)
        # The token is base64 of "AWS:<password>": exactly a Basic credential.
        self._header = "Basic " + token
        self.start()
        log.info(
            "got ECR token for %s, valid %.0f s, refresh in %.0f s",
            self._config.name,
            lifetime,
            self.refresh_at - started,
        )
        return self._header

    def _failed(self) -> None:
        self._failed_until = self._clock() + ECR_FAILURE_MEMORY
        if self._on_failure is not None:
            self._on_failure(self)

    def _call(self) -> dict[str, Any]:
        client = self._aws.client(self._config)
        kwargs = {"registryIds": [self._registry_id]} if self._registry_id else {}
        answer = client.get_authorization_token(**kwargs)
        entries = answer.get("authorizationData") or [{}]
        return dict(entries[0])


def credentials_for(
    config: UpstreamConfig,
    aws: AwsClients,
    on_failure: Callable[[EcrCredentials], None] | None = None,
    lane: Callable[[], str | None] | None = None,
) -> Credentials | None:
    """The credential source an upstream's config asks for, or None (anonymous);
    ``on_failure`` and ``lane``: as for :class:`EcrCredentials`."""
    if config.ecr:
        return EcrCredentials(config, aws, on_failure=on_failure, lane=lane)
    login = static_login(config)
    if login is None:
        return None
    return StaticCredentials(*login)
