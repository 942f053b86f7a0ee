"""Who may bring a new registry into the ``ecr`` preset's set, and how often. Pure.

The preset admits any ``<account>.dkr.ecr.<region>.amazonaws.com`` in a region AWS
has, and twelve digits are free to make up: one client naming made-up accounts
would otherwise fill the set (evicting registries other clients pull from) and the
preset's waiting AWS calls (so their tokens get UNAVAILABLE). So each client (its
login, else its address: ``fairness.client_address``) may bring in only a few new
registries a minute; beyond, TOOMANYREQUESTS with ``Retry-After``, the spec's code
for a client that asks too often (OCI distribution spec, "Error Codes"), and a
condition that passes, unlike DENIED, which would say the registry itself is refused.

A registry whose token ECR refused (an account that does not exist, or that the
proxy's credentials cannot reach) is remembered here for a while, so naming it
again is answered at once, without an AWS call and without taking a place in the set.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable

from ..errors import CredentialsUnavailable, TooManyRequests

# The window the per-client count of new registries covers.
WINDOW = 60.0
# Clients whose recent newcomers are counted (the least recently counted is
# forgotten past it: memory stays bounded whatever the number of addresses).
CLIENTS_KEPT = 4096
# Registries remembered as failed at once (the oldest is forgotten past it).
FAILED_KEPT = 1024


def retry_after(seconds: float) -> dict[str, str]:
    """A ``Retry-After`` of whole seconds, at least one (RFC 9110 section 10.2.3)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class Newcomers:
    """Per client, the registries it brought in over the last :data:`WINDOW`; and the
    registries whose token just failed. ``clock``: monotonic seconds."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._recent: OrderedDict[str, deque[float]] = OrderedDict()
        self._failed: OrderedDict[str, float] = OrderedDict()

    def admit(self, client: str, registry: str) -> None:
        """Count ``registry`` as one ``client`` brings in; TOOMANYREQUESTS (and nothing
        counted) when it brought ``per_minute`` in within the last minute."""
        now = self._clock()
        times = self._recent.pop(client, None) or deque()
        while times and now - times[0] >= WINDOW:
            times.popleft()
        self._recent[client] = times
        while len(self._recent) > CLIENTS_KEPT:
            self._recent.popitem(last=False)
        if len(times) >= self._per_minute:
            raise TooManyRequests(
                f"this client named {len(times)} new registries of the ecr preset within a"
                " minute (ecr_new_registries_per_minute)",
                detail={"registry": registry[:200]},
                headers=retry_after(times[0] + WINDOW - now),
            )
        times.append(now)

    def check_failed(self, registry: str) -> None:
        """UNAVAILABLE (with ``Retry-After``) while ``registry``'s failure is remembered."""
        until = self._failed.get(registry)
        if until is None:
            return
        left = until - self._clock()
        if left <= 0:
            del self._failed[registry]
            return
        raise CredentialsUnavailable(
            "cannot get an ECR authorization token (recently failed)",
            detail={"registry": registry[:200]},
            headers=retry_after(left),
        )

    def failed(self, registry: str, seconds: float) -> None:
        """Remember for ``seconds`` that ``registry``'s token failed."""
        self._failed.pop(registry, None)
        self._failed[registry] = self._clock() + seconds
        while len(self._failed) > FAILED_KEPT:
            self._failed.popitem(last=False)
