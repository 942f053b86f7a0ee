"""The ``ecr`` preset's AWS work, kept apart from the configured registries'.

The preset admits any ``<account>.dkr.ecr.<region>.amazonaws.com`` a client names,
so a client decides which regions boto3 clients are built for. A build costs tens of
milliseconds of CPU and stays in memory (about 9 MB from a session of its own, 1 MB
from a shared one), and its calls take AWS threads. So:

- only regions AWS has are admitted: those the installed botocore lists for ECR in
  the partition of the host's domain (read once, in a thread, at start), or the
  ones ``ecr_regions`` names. A host naming any other region is refused with
  DENIED before anything is built;
- the clients come from one boto3 session (the service model is loaded once), one
  per admitted region at most, and are kept;
- their builds and calls run on threads of their own, with a bound on what waits:
  a configured registry's token never queues behind a client's made-up registries;
- one client's calls (those of the registries it brought in and nobody pulls from
  yet) take one of those threads at a time, the rest waiting in its own line: its
  slow made-up accounts never hold every thread another client's token needs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..config import UpstreamConfig
from ..errors import Denied, UpstreamUnavailable
from .aws import AwsClients, ClientFactory

# The preset's AWS threads, the calls that may wait for them, and the clients kept
# (more than the regions of any partition: none is ever built twice).
PRESET_THREADS = 2
PRESET_WAITING = 64
PRESET_CLIENTS = 64
# The threads one client's token calls take at once (fewer than PRESET_THREADS).
PRESET_CALLS_PER_CLIENT = 1
# The partitions whose ECR hosts the preset's host pattern matches, by DNS suffix.
PARTITIONS = {"amazonaws.com": ("aws", "aws-us-gov"), "amazonaws.com.cn": ("aws-cn",)}

Regions = dict[str, frozenset[str]]


def suffix_of(host: str) -> str:
    """The DNS suffix of an ECR registry host (a partition's domain)."""
    return "amazonaws.com.cn" if host.endswith(".amazonaws.com.cn") else "amazonaws.com"


def known_regions() -> Regions:
    """ECR's regions by DNS suffix, as the installed botocore knows them (blocking:
    boto3 is imported and its endpoint data read)."""
    import boto3

    session = boto3.session.Session()
    return {
        suffix: frozenset(
            region
            for partition in partitions
            for region in session.get_available_regions("ecr", partition_name=partition)
        )
        for suffix, partitions in PARTITIONS.items()
    }


def named_regions(regions: tuple[str, ...]) -> Regions:
    """``ecr_regions`` by DNS suffix (China's regions are on their own domain)."""
    china = frozenset(r for r in regions if r.startswith("cn-"))
    return {"amazonaws.com": frozenset(regions) - china, "amazonaws.com.cn": china}


class SessionClients:
    """ECR clients from one boto3 session (boto3's default credential chain), whose
    loader parses the service model once for all of them. A session is not safe
    for threads: clients are made under a lock (they are, once made)."""

    def __init__(self) -> None:
        self._session: Any = None
        self._lock = threading.Lock()

    def __call__(self, config: UpstreamConfig) -> Any:
        import boto3

        from .credentials import quiet_aws_logs

        with self._lock:
            if self._session is None:
                quiet_aws_logs()
                self._session = boto3.session.Session()
            return self._session.client("ecr", region_name=config.region)


class EcrPreset:
    """Which of the preset's registries are admitted, and the AWS threads and clients
    they use. ``start`` must have run before :meth:`admit` admits anything."""

    def __init__(
        self,
        regions: tuple[str, ...] = (),
        factory: ClientFactory | None = None,
        loader: Callable[[], Regions] = known_regions,
    ) -> None:
        self._named = regions
        self._loader = loader
        self._admitted: Regions | None = None
        self.aws = AwsClients(
            factory or SessionClients(),
            PRESET_THREADS,
            max_clients=PRESET_CLIENTS,
            max_waiting=PRESET_WAITING,
            name="aws-preset",
            per_owner=PRESET_CALLS_PER_CLIENT,
        )

    async def start(self) -> None:
        """Read the regions AWS has (once, on the preset's own threads)."""
        if self._named:
            self._admitted = named_regions(self._named)
        else:
            self._admitted = await self.aws.run(self._loader)

    def admit(self, settings: UpstreamConfig) -> AwsClients:
        """The threads and clients for the preset's registry ``settings``; DENIED,
        with nothing built, when its region is not one the preset serves."""
        if self._admitted is None:
            raise UpstreamUnavailable("the ecr preset is starting")
        if settings.region not in self._admitted.get(suffix_of(settings.name), frozenset()):
            raise Denied(
                f"{str(settings.region)[:60]} is not an AWS region this proxy's ecr preset"
                " serves (ecr_regions)",
                detail={"registry": settings.name[:200]},
            )
        return self.aws

    def close(self) -> None:
        self.aws.close()
