"""Who reaches what: the client listener, the peer listener, and the refusal to hand
the proxy's upstream logins to anyone on the network.

A node-local mirror serves its own node's container runtime, which reaches it on
loopback. Credentials the proxy holds for private registries are node-level
credentials in effect (containerd sends no pod's pull secret to a mirror), so a
client listener open to the network, without client authentication, lets any pod
pull private images. Peers reach each other on a separate listener, ``peer_listen``,
which serves only the signed peer path and the probes; Prometheus may get one of its
own, ``metrics_listen``, which serves only /metrics and the probes.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .config import Config
from .errors import NotFound
from .http.keys import CLOSE_CONNECTION
from .peers.cluster import PREFIX as PEER_PREFIX

# What the peer listener answers: the signed peer path, and the kubelet's probes.
PEER_LISTENER_PATHS = (PEER_PREFIX + "/", "/healthz", "/readyz")
# What the metrics listener answers: Prometheus's scrape, and the probes.
METRICS_LISTENER_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (an IPv4 one mapped into IPv6,
    ``::ffff:127.0.0.1``, included: a dual-stack socket reports IPv4 peers so)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def local_port(request: web.Request) -> int | None:
    """The port of the listener a request came in on."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[1] if isinstance(sockname, tuple) else None


def peer_address(request: web.Request) -> str | None:
    """The address of the connection's other end: never a header a client wrote
    (X-Forwarded-For and the like)."""
    peername = request.transport.get_extra_info("peername") if request.transport else None
    return str(peername[0]) if isinstance(peername, tuple) else None


def credentialed(config: Config) -> list[str]:
    """The upstreams whose logins the proxy holds (and the ecr preset's, if enabled)."""
    names = [
        up.name
        for up in config.upstreams
        if up.ecr or up.username or up.password or up.password_file or up.docker_config
    ]
    if "ecr" in config.presets:
        names.append("every ECR registry (the ecr preset)")
    return names


def exposure_problem(config: Config) -> str | None:
    """Why serving ``config`` would hand its logins to the network, or None."""
    if is_loopback(config.host) or config.expose_credentials:
        return None
    if not config.auth_anonymous:
        return None
    held = credentialed(config)
    if not held:
        return None
    return (
        f"refusing to listen on {config.listen}: any client that reaches it could pull"
        f" with the proxy's logins for {', '.join(held)}. Listen on 127.0.0.1 (peers use"
        " peer_listen), require clients to log in ([auth] anonymous = false), or set"
        " expose_credentials = true"
    )


def guard(config: Config) -> Middleware:
    """Each listener answers only its own paths: the peer listener the peer path and
    the probes; the metrics listener /metrics and the probes; the client listener
    everything but the peer path, when peers have a listener of their own."""
    peer_port, metrics_port = config.peer_port, config.metrics_port

    @web.middleware
    async def listener_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        port = local_port(request) if peer_port or metrics_port else None
        if metrics_port is not None and port == metrics_port:
            if request.path not in METRICS_LISTENER_PATHS:
                raise NotFound("the metrics listener serves only /metrics and the probes")
        elif peer_port is not None:
            on_peer = port == peer_port
            peer_path = request.path.startswith(PEER_PREFIX + "/")
            if on_peer and not request.path.startswith(PEER_LISTENER_PATHS):
                # Nothing a peer asks: closed after the answer, as an unsigned request.
                request[CLOSE_CONNECTION] = True
                raise NotFound("the peer listener serves only the peer path")
            if not on_peer and peer_path:
                raise NotFound("peers are served on the peer listener")
        return await handler(request)

    return listener_guard
