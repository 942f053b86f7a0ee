"""What an upstream's answers mean: statuses as OCI errors, small bodies read whole.

Pure of the client's state; :mod:`.client` re-exports these for its callers.
"""

from __future__ import annotations

import aiohttp

from ..errors import (
    Denied,
    RegistryError,
    TooManyRequests,
    Unauthorized,
    UpstreamBadContent,
    UpstreamUnavailable,
)


def pull_scope(repo: str) -> str:
    """The token scope for pulling from ``repo`` (distribution's token spec)."""
    return f"repository:{repo}:pull"


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """A small body (a manifest, a tag list) read whole, at most ``limit`` bytes.

    Raises UpstreamBadContent past the limit and UpstreamUnavailable on a break.
    """
    if resp.content_length is not None and resp.content_length > limit:
        raise UpstreamBadContent("upstream answer exceeds the size limit")
    try:
        body = await resp.content.read(limit + 1)
        while len(body) <= limit:
            more = await resp.content.read(limit + 1 - len(body))
            if not more:
                break
            body += more
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnavailable("upstream broke off its answer") from exc
    if len(body) > limit:
        raise UpstreamBadContent("upstream answer exceeds the size limit")
    return body


async def says_expired(resp: aiohttp.ClientResponse) -> bool:
    try:
        body = await resp.content.read(4096)
    except (aiohttp.ClientError, TimeoutError):
        return False
    return b"expired" in body.lower()


def error_for_status(resp: aiohttp.ClientResponse, not_found: type[RegistryError]) -> RegistryError:
    """The OCI error a client should see for an upstream's non-success status."""
    status = resp.status
    if status == 404:
        return not_found()
    if status == 401:
        return Unauthorized("upstream refused access")
    if status == 403:
        return Denied("upstream denied access")
    if status == 429:
        headers = {}
        if "Retry-After" in resp.headers:
            headers["Retry-After"] = resp.headers["Retry-After"]
        return TooManyRequests("upstream rate limit reached", headers=headers)
    err = UpstreamUnavailable(
        f"upstream answered {status}"
        if status >= 500
        else f"upstream answered unexpected status {status}"
    )
    # The freshness rules tell a 5xx (an answer) from an upstream not reached.
    err.answered = status
    return err
