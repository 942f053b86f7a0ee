"""Who may read the operator's views: ``/metrics`` and the cluster view.

They name upstreams, ECR account IDs and cluster members, and count what the
proxy did for every client: they are for the operator and Prometheus, not for the
tenants a node serves, whatever ``[auth] anonymous`` says about pulls. A request
for one is answered when it

- came in on the metrics listener (``metrics_listen``): whoever reaches that address
  (bind it where only Prometheus does);
- came from a loopback address (``[metrics] loopback``, on by default): the node's
  own processes. The address is the connection's own peer, never a header a client
  wrote (X-Forwarded-For and the like); behind a reverse proxy on the same host
  every client looks local, so switch it off there;
- or came from a client logged in as one of ``[metrics] subjects`` (globs over
  client names, as in ``[[access]]``).

Anyone else gets UNAUTHORIZED with a challenge when logins exist and it sent none,
else DENIED.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from aiohttp import web

from ..config import Config
from ..errors import Denied, Unauthorized
from ..listeners import is_loopback, local_port, peer_address
from .clientauth import ANONYMOUS, CHALLENGE, ClientAuth

# The operator's views (the dashboard has its own rule: clientauth.check_viewer).
OPERATOR_PATHS = frozenset(
    {"/metrics", "/_cacheproxy/peers", "/_cacheproxy/refresh", "/_cacheproxy/preheat"}
)


@dataclass(frozen=True, slots=True)
class OperatorAccess:
    """The rule for the operator's views (see the module docstring)."""

    subjects: tuple[str, ...] = ()
    loopback: bool = True
    #: The metrics listener's port, if there is one.
    listener_port: int | None = None

    @classmethod
    def from_config(cls, config: Config) -> OperatorAccess:
        return cls(config.metrics_subjects, config.metrics_loopback, config.metrics_port)

    def admits_address(self, address: str | None) -> bool:
        """Whether a client at ``address`` may read without logging in."""
        return self.loopback and address is not None and is_loopback(address)

    def admits_subject(self, subject: str) -> bool:
        """Whether the client named ``subject`` may read."""
        return any(fnmatch.fnmatchcase(subject, pattern) for pattern in self.subjects)

    async def check(self, request: web.Request, auth: ClientAuth) -> None:
        """Return if ``request`` may read an operator's view; else raise 401 or 403."""
        if self.listener_port is not None and local_port(request) == self.listener_port:
            return
        if self.admits_address(peer_address(request)):
            return
        subject = await auth.identify(request.headers.get("Authorization"))
        if self.admits_subject(subject):
            return
        if subject == ANONYMOUS and auth.accepts_logins:
            raise Unauthorized("log in to see this", headers=CHALLENGE)
        raise Denied(f"{subject} may not see this")


OPERATOR = web.AppKey("operator_access", OperatorAccess)
