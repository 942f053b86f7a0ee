"""What the connection layer (``connections/``) and the HTTP handlers (``http/``)
share, below both: the OCI error JSON answer, the probes' paths, and the keys a
request carries about its connection."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .errors import RegistryError

# Answered whatever else holds: the kubelet's probes (without credentials, and to a
# connection admitted beyond a listener's bound).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

# Done when the request's connection is lost (see connections.guard.Guard.gone).
CONNECTION_GONE = web.RequestKey("connection_gone", asyncio.Future[None])
# The answer closes its connection (a peer request without a valid signature: a
# stranger gets no kept-alive connection to hold; connections.gate.mark).
CLOSE_CONNECTION = web.RequestKey("close_connection", bool)


def error_response(err: RegistryError, head: bool = False) -> web.Response:
    """The spec's ``{"errors": [...]}`` body with the error's status and headers."""
    body = json.dumps(err.to_json()).encode()
    headers = dict(err.headers)
    if head:
        headers["Content-Length"] = str(len(body))
    return web.Response(
        status=err.status,
        body=None if head else body,
        content_type="application/json",
        headers=headers,
    )
