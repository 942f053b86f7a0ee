"""Known registries: host aliases, built-in presets, and ECR host parsing. Pure.

Below the configuration: `config` names presets from here, nothing here reads settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"

# Names clients use for Docker Hub (docker's own normalisation, plus its API host).
_ALIASES = {
    "docker.io": DOCKER_HUB,
    "index.docker.io": DOCKER_HUB,
    "registry-1.docker.io": DOCKER_HUB,
    "registry.hub.docker.com": DOCKER_HUB,
}

PUBLIC_PRESETS: dict[str, str] = {
    DOCKER_HUB: DOCKER_HUB_URL,
    "ghcr.io": "https://ghcr.io",
    "quay.io": "https://quay.io",
    "registry.k8s.io": "https://registry.k8s.io",
    "public.ecr.aws": "https://public.ecr.aws",
}
# Enables every private ECR registry, ``<account>.dkr.ecr.<region>.amazonaws.com``,
# with credentials from the AWS default chain.
ECR_PRESET = "ecr"
ALL_PRESETS = (*PUBLIC_PRESETS, ECR_PRESET)

_ECR_RE = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9])"
    r"\.amazonaws\.com(?:\.cn)?"
)


# A DNS name or an IPv6 literal, with an optional port: what a registry host may be.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]+\])(?::[0-9]{{1,5}})?")


@dataclass(frozen=True, slots=True)
class EcrHost:
    account: str
    region: str


def normalize_host(host: str) -> str:
    """Lowercase, drop a trailing dot and HTTPS's default port, fold Docker Hub aliases."""
    host = host.strip().lower().rstrip(".")
    if host.endswith(":443"):
        host = host[:-4]
    return _ALIASES.get(host, host)


def clean_host(value: str) -> str | None:
    """``value`` normalised, if it is a plain ``host[:port]``; else None.

    What may be echoed in a header: never a character that could end one.
    """
    host = normalize_host(value)
    return host if len(host) <= 255 and _HOST_RE.fullmatch(host) else None


def ecr_host(host: str) -> EcrHost | None:
    """Account and region of a private ECR registry host, or None."""
    m = _ECR_RE.fullmatch(normalize_host(host))
    if m is None:
        return None
    return EcrHost(m.group("account"), m.group("region"))
